"""Pictures of a policy's hypotheses."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tasks import TaskSpec  # noqa: E402
from tasks.spec import eval_seed  # noqa: E402

ROUTE_COLOURS = {0: "tab:blue", 1: "tab:orange", -1: "0.5"}
SIDE_DEADBAND = 0.25  # sideways offset, in obstacle radii, under which a path heads at it


def hypotheses_picture(policy, spec: TaskSpec, path: Path, n: int = 64, seed: int = 0) -> dict:
    """Draw n chunks from the first evaluation state in ONE forward, play each one
    open-loop in the simulator from that state, and plot the hand paths. On route tasks
    a path is coloured by the route it is on at the end of the chunk (the route info,
    or the side of the pillar it is heading to); grey paths head at the pillar.
    Returns the route counts."""
    env = spec.make_env()
    obs, _ = env.reset(seed=eval_seed(seed, 0))
    history = torch.as_tensor(np.repeat(obs[None, None], policy.config.model.obs_horizon, 1))
    chunks, info = policy.predict_chunks(history.float(), n=n)
    lo, hi = spec.hand_obs
    paths, routes = [], []
    for chunk in chunks[0].numpy():
        o, _ = env.reset(seed=eval_seed(seed, 0))
        xy, route = [o[lo : lo + 2]], -1
        for action in chunk:
            o, _, terminated, truncated, step_info = env.step(action)
            xy.append(o[lo : lo + 2])
            route = step_info.get("route", -1)
            if terminated or truncated:
                break
        if spec.obstacle is not None and route < 0:  # the side it is heading to
            centre, radius, left = spec.obstacle(obs)
            side = (xy[-1] - centre) @ left
            route = -1 if abs(side) < SIDE_DEADBAND * radius else int(side < 0)
        paths.append(np.array(xy))
        routes.append(int(route))
    env.close()
    fig, ax = plt.subplots(figsize=(5, 5))
    if spec.obstacle is not None:
        centre, radius, _ = spec.obstacle(obs)
        ax.add_patch(plt.Circle(centre, radius, color="tab:red", alpha=0.5))
    for p, r in zip(paths, routes, strict=True):
        ax.plot(p[:, 0], p[:, 1], color=ROUTE_COLOURS.get(r, "0.5"), alpha=0.6, lw=1)
    ax.plot(*obs[lo : lo + 2], "ko")
    counts = {r: routes.count(r) for r in sorted(set(routes))}
    ax.set_title(f"{n} hypotheses, one forward; routes {counts}", fontsize=9)
    ax.set_aspect("equal")
    ax.autoscale_view()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"route_counts": counts, "uncertainty": float(info["uncertainty"][0])}


# ---------------------------------------------------------------- benchmark suites
LATENCY_RESULTS = Path("benchmarks/results/latency/results.json")


def _by(rows: list[dict], field: str) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r[field], []).append(r)
    return out


def comparison_plots(results_dir: Path, rows: list[dict]) -> list[Path]:
    """Latency rows: per-method bars at each batch (log scale). Success rows: per-task
    bars (mean and std over seeds) and, when the latency suite has been run, success
    against batch-1 latency per method."""
    results_dir = Path(results_dir)
    written = []
    if rows and "ms_median" in rows[0]:
        chunk_rows = [r for r in rows if not r["method"].startswith("train_step")]
        fig, ax = plt.subplots(figsize=(8, 3.5))
        batches = sorted({r["batch"] for r in chunk_rows})
        methods = list(dict.fromkeys(r["method"] for r in chunk_rows))
        width = 0.8 / len(batches)
        for i, batch in enumerate(batches):
            ms = {r["method"]: r["ms_median"] for r in chunk_rows if r["batch"] == batch}
            xs = np.arange(len(methods)) + i * width
            ax.bar(xs, [ms[m] for m in methods], width, label=f"batch {batch}")
        ax.set_xticks(np.arange(len(methods)) + width * (len(batches) - 1) / 2, methods)
        ax.set_yscale("log")
        ax.set_ylabel("ms per chunk (median)")
        ax.legend()
        fig.tight_layout()
        written.append(results_dir / "latency.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
        return written
    group = "setting" if "setting" in rows[0] else "task"  # metaworld-hard: by setting
    groups = list(dict.fromkeys(r[group] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(groups)), 3.5))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        mine = _by([r for r in rows if r["method"] == method], group)
        means = [np.mean([r["success"] for r in mine.get(g, [])] or [np.nan]) for g in groups]
        stds = [np.std([r["success"] for r in mine.get(g, [])] or [np.nan]) for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, means, width, yerr=stds, label=method)
    short = [g.split("/")[-1] for g in groups]
    ax.set_xticks(np.arange(len(groups)) + width * (len(methods) - 1) / 2, short, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success (final checkpoint)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(results_dir / f"success_by_{group}.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    if LATENCY_RESULTS.is_file():
        latency = {
            r["method"]: r["ms_median"]
            for r in json.loads(LATENCY_RESULTS.read_text())
            if r["batch"] == 1 and "train_step" not in r["method"]
        }
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for method in methods:
            if method in latency:
                success = np.mean([r["success"] for r in rows if r["method"] == method])
                ax.scatter(latency[method], success, s=40)
                ax.annotate(method, (latency[method], success), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("ms per chunk at batch 1 (latency suite)")
        ax.set_ylabel("mean success")
        fig.tight_layout()
        written.append(results_dir / "success_vs_latency.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
