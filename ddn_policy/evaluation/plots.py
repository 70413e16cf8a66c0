"""Pictures of a policy's hypotheses."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from tasks import TaskSpec  # noqa: E402
from tasks.spec import eval_seed  # noqa: E402

ROUTE_COLOURS = {0: "tab:blue", 1: "tab:orange", -1: "0.5"}
SIDE_DEADBAND = 0.05  # |y - pillar y| under which a path heads at the pillar (grey)


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
        if spec.has_route and route < 0:
            dy = xy[-1][1] - obs[7]  # obstacle-reach obs[6:8] is the pillar
            route = -1 if abs(dy) < SIDE_DEADBAND else int(dy < 0)
        paths.append(np.array(xy))
        routes.append(int(route))
    env.close()
    fig, ax = plt.subplots(figsize=(5, 5))
    if spec.has_route:
        pillar, goal = obs[6:8], obs[4:6]
        ax.add_patch(plt.Circle(pillar, 0.22, color="tab:red", alpha=0.5))
        ax.add_patch(plt.Circle(goal, 0.06, color="tab:green", alpha=0.6))
    for p, r in zip(paths, routes, strict=True):
        ax.plot(p[:, 0], p[:, 1], color=ROUTE_COLOURS.get(r, "0.5"), alpha=0.6, lw=1)
    ax.plot(*obs[lo : lo + 2], "ko")
    counts = {r: routes.count(r) for r in sorted(set(routes))}
    ax.set_title(f"{n} hypotheses, one forward; routes {counts}", fontsize=9)
    ax.set_aspect("equal")
    ax.set_xlim(-1.1, 1.1) if spec.has_route else None
    ax.set_ylim(-1.1, 1.1) if spec.has_route else None
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"route_counts": counts, "uncertainty": float(info["uncertainty"][0])}
