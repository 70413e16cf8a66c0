#!/usr/bin/env bash
# ddn-bench suite=latency on a CUDA machine (a few minutes on one GPU): per-chunk time of
# DDN, Diffusion Policy (DDPM-100, DDIM-10, DDIM-1) and regression at batch 1 and 64,
# and one training step of each, with the same files as the CPU run.
#   bash benchmarks/gpu_latency.sh [RESULTS_DIR] [more hydra overrides]
set -euo pipefail
results_dir=${1:-benchmarks/results/latency-cuda}
shift || true
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
python -m ddn_policy.cli.bench suite=latency suite.device=cuda \
  "suite.results_dir=${results_dir}" "out_dir=${results_dir}" "$@"
