"""`ddn-toy2d out_dir=DIR [quick=true]`: the paper's Figure 17 as a command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from ddn_policy.cli import CONFIG_DIR, refuse_targets
from ddn_policy.toy2d.densities import DENSITIES, Density
from ddn_policy.toy2d.experiment import (
    FREE_POINT_METHODS,
    FreePointSettings,
    NetworkSettings,
    fit_free_points,
    fit_network,
    frame_histograms,
)
from ddn_policy.toy2d.metrics import divergences, histogram
from ddn_policy.toy2d.plots import save_gif, save_grid
from ddn_policy.utils.io import atomic_write_text


def run(cfg: DictConfig) -> dict:
    if cfg.quick:
        cfg = OmegaConf.merge(cfg, cfg.quick_settings)
    unknown = [d for d in cfg.densities if d not in DENSITIES]
    if unknown:
        raise ValueError(f"unknown densities {unknown}; known: {', '.join(DENSITIES)}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points_cfg = FreePointSettings(**cfg.points)
    net_cfg = NetworkSettings(**cfg.network)
    metrics, hists, frames, seconds = {}, {"truth": {}}, {m: {} for m in FREE_POINT_METHODS}, {}
    for name in cfg.densities:
        density = Density(name, cfg.bins, cfg.text)
        truth = density.grid()
        hists["truth"][name] = truth
        results = {}
        for method in FREE_POINT_METHODS:
            start = time.perf_counter()
            points, snaps = fit_free_points(density, method, points_cfg, cfg.seed)
            seconds[f"{name}/{method}"] = time.perf_counter() - start
            results[method] = points
            frames[method][name] = frame_histograms(snaps, cfg.bins)
        rng = np.random.default_rng(cfg.seed + 10_000)
        results["real_samples"] = density.sample(points_cfg.k, rng)
        start = time.perf_counter()
        results["ddn_network"], _ = fit_network(density, net_cfg, points_cfg.k, cfg.seed)
        seconds[f"{name}/ddn_network"] = time.perf_counter() - start
        metrics[name] = {}
        for method, pts in results.items():
            # Points that left the square fall in the edge bins, as they would in a plot.
            hist = histogram(np.clip(pts, -1, 1 - 1e-9), cfg.bins)
            hists.setdefault(method, {})[name] = hist
            metrics[name][method] = divergences(truth, hist)
        print(
            f"{name:>12}: " + "  ".join(f"{m} KL {v['kl']:.3f}" for m, v in metrics[name].items()),
            flush=True,
        )
    report = {
        "metrics": metrics,
        "settings": OmegaConf.to_container(cfg, resolve=True),
        "seconds": seconds,
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    atomic_write_text(out / "run.json", json.dumps(report, indent=2))
    save_grid(out / "grid.png", hists, metrics)
    save_gif(out / "optimisation.gif", frames)
    print(f"wrote {out / 'metrics.json'}, {out / 'grid.png'} and {out / 'optimisation.gif'}")
    return metrics


@hydra.main(config_path=CONFIG_DIR, config_name="toy2d", version_base="1.3")
def main(cfg: DictConfig) -> None:
    refuse_targets(cfg)
    run(cfg)


if __name__ == "__main__":
    main()
