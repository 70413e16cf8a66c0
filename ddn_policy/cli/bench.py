"""`ddn-bench suite=<name>`: benchmarks that write JSON and markdown."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ddn_policy.cli import CONFIG_DIR, refuse_targets
from ddn_policy.core import Selector, Uniform
from ddn_policy.evaluation.bench_compare import compare
from ddn_policy.evaluation.bench_ddp import data_parallel
from ddn_policy.evaluation.bench_dense import dense_suite
from ddn_policy.evaluation.bench_images import images_suite
from ddn_policy.evaluation.bench_policy import ddn_latency, method_latency
from ddn_policy.evaluation.bench_sampling import sampling_ablation
from ddn_policy.evaluation.bench_tasks import experts, runner_overhead
from ddn_policy.evaluation.plots import comparison_plots
from ddn_policy.evaluation.report import markdown_table, write_report, write_results
from ddn_policy.evaluation.timing import median_seconds
from ddn_policy.models.mlp import MLPDDNConfig, mlp_ddn


class UniformAllK(Uniform):
    """Uniform choice, but asks the layer for all K candidates (the reference's path)."""

    needs_candidates = True


def fastpath(cfg: DictConfig) -> tuple[dict, str]:
    s = cfg.suite
    net = mlp_ddn(MLPDDNConfig(sample_dim=s.sample_dim, width=s.width, num_layers=s.layers, k=s.k))
    net.eval()
    rows = []
    for batch in s.batches:

        def timed(selector: Selector, batch=batch):
            gen = torch.Generator().manual_seed(cfg.seed)
            with torch.inference_mode():
                return median_seconds(
                    lambda: net.walk(batch, selector, None, gen), s.warmup, s.calls
                )

        fast, full = timed(Uniform()), timed(UniformAllK())
        rows.append(
            {
                "batch": batch,
                "fast_ms": 1e3 * fast,
                "all_k_ms": 1e3 * full,
                "speedup": full / fast,
            }
        )
        print(
            f"batch {batch}: fast {1e3 * fast:.3f} ms, all-K {1e3 * full:.3f} ms, "
            f"speed-up {full / fast:.2f}x",
            flush=True,
        )
    payload = {"suite": "fastpath", "settings": OmegaConf.to_container(s), "rows": rows}
    return payload, markdown_table(rows, ["batch", "fast_ms", "all_k_ms", "speedup"])


SUITES = {
    "fastpath": fastpath,
    "experts": experts,
    "experts-hard": experts,
    "runner": runner_overhead,
    "ddn_latency": ddn_latency,
    "sampling": sampling_ablation,
    "ddp": data_parallel,
}
# suites that compare methods: results.json (flat rows), results.md and plots under
# suite.results_dir
COMPARISONS = {
    "multimodal": (compare, comparison_plots),
    "metaworld": (compare, comparison_plots),
    "metaworld-hard": (compare, comparison_plots),
    "latency": (method_latency, comparison_plots),
    "images": (images_suite, None),  # its picture sheets are written while it runs
    "dense": (dense_suite, None),  # likewise
}


@hydra.main(config_path=CONFIG_DIR, config_name="bench", version_base="1.3")
def main(cfg: DictConfig) -> None:
    refuse_targets(cfg)
    name = cfg.suite.name
    if name not in SUITES and name not in COMPARISONS:
        known = ", ".join([*SUITES, *COMPARISONS])
        raise ValueError(f"unknown suite {name!r}; known: {known}")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    command = " ".join(["ddn-bench", *HydraConfig.get().overrides.task])
    if name in COMPARISONS:
        measure, plots = COMPARISONS[name]
        rows, table = measure(cfg)
        results_dir = Path(hydra.utils.to_absolute_path(cfg.suite.results_dir))
        write_results(results_dir, rows, table, command)
        if plots is not None:
            plots(results_dir, rows)
        print(f"wrote {results_dir}/results.json and results.md")
        return
    payload, table = SUITES[name](cfg)
    write_report(Path(cfg.out_dir), name, payload, table, command)
    print(f"wrote {Path(cfg.out_dir) / name}.json and .md")


if __name__ == "__main__":
    main()
