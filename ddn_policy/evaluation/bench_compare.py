"""`ddn-bench suite=multimodal|metaworld|metaworld-hard`: DDN against Diffusion Policy
and regression.

Settings (metaworld-hard): a suite may name `settings`, each a number of demonstrations,
task options for training (e.g. expert noise) and task options for evaluation only (e.g.
out-of-distribution starts); rows then carry `setting`, and the loops run seed by seed,
so a partial run has every setting of the first seed.

Fairness: for each (task, demos) one demonstration set (seed `demos_seed`) serves every
method and training seed; every method trains with the same steps and batch through
`ddn-train`, and is evaluated on the same starts (`eval_seed`). Diffusion Policy is
trained once per seed and evaluated with each of its samplers (DDPM-100, DDIM-10).

Resumability: a training is cached in `cache_dir/<task>-<policy>-d<demos>-s<seed>-<hash>`
where the hash covers every setting that shapes it (an interrupted ddn-train resumes
from its last checkpoint); each evaluation of a checkpoint is cached beside it as JSON.
A finished row is kept in `results_dir/rows/<run>-<method>-<eval hash>.json`, which is
committed with the results: `cache_dir` does not outlive a session's machine, so a later
session skips every committed row without training anything. A changed setting changes
a hash, so stale runs are never mixed in. `suite.committed_only=true` tabulates the
committed rows alone (training nothing): the honest table of a partial suite, with each
row's number of seeds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ddn_policy.cli.refit import refit_checkpoint
from ddn_policy.evaluation.report import aggregate, markdown_table
from ddn_policy.evaluation.runs import flatten
from ddn_policy.policies.factory import POLICIES
from ddn_policy.utils.io import atomic_write_text, settings_key


def check_methods(methods: dict) -> None:
    """Every method names a known policy; inference settings belong to its policy."""
    for name, m in methods.items():
        if m.get("policy") not in POLICIES:
            raise ValueError(
                f"method {name!r} has policy={m.get('policy')!r}; known: {', '.join(POLICIES)}"
            )
        if m.get("refit", False) and m["policy"] != "ddn":
            raise ValueError(
                f"method {name!r} asks for refit=true, which refits a DDN selection prior; "
                f"policy={m['policy']!r} has none"
            )


def with_suite_inference(methods: dict, inference: DictConfig | None) -> dict:
    """Each method with the suite's `inference` settings under its own (e.g. obs_clip for
    every method). Without suite settings the methods, and so their row keys, are unchanged."""
    if not inference:
        return methods
    shared = OmegaConf.to_container(inference)
    return {name: m | {"inference": shared | m.get("inference", {})} for name, m in methods.items()}


def refit_settings(s: DictConfig, method: dict) -> dict | None:
    """The PriorRefitConfig fields of a method with refit=true (the suite's `refit`
    block over the defaults), None for the others."""
    if not method.get("refit", False):
        return None
    from dataclasses import asdict

    from ddn_policy.core.prior_refit import PriorRefitConfig

    fields = s.get("refit")
    return asdict(PriorRefitConfig(**(OmegaConf.to_container(fields) if fields else {})))


def training_settings(
    s: DictConfig,
    task: str,
    demos: int,
    policy: str,
    seed: int,
    task_options: dict | None = None,
    method_overrides: dict | None = None,
) -> dict:
    """Everything that shapes one training: the key of its cache directory.
    `method_overrides`: a method's own policy fields (e.g. {model: {k: 4}}) over the
    suite's per-policy ones."""
    options = {"task_options": task_options} if task_options else {}  # keys unchanged without
    overrides = OmegaConf.merge(s.policy_overrides.get(policy, {}), method_overrides or {})
    return (
        options
        | {
            "task": task,
            "demos": demos,
            "demos_seed": s.demos_seed,
            "policy": policy,
            "preset": s.preset,
            "policy_overrides": OmegaConf.to_container(overrides),
            "steps": s.steps,
            "batch_size": s.batch_size,
            "checkpoint_every": s.checkpoint_every,
            "seed": seed,
            "device": s.device,
        }
        | balance_setting(s.get("balance_until", 1.0))
    )


def balance_setting(balance_until: float) -> dict:
    """The split-and-prune horizon as a key entry: absent at the reference's 1.0, so runs
    cached before the option existed keep their keys."""
    return {} if balance_until == 1.0 else {"balance_until": balance_until}


def overrides_of(settings: dict) -> list[str]:
    """ddn-train's command-line overrides for one training."""
    out = [
        f"task={settings['task']}",
        f"policy={settings['policy']}",
        f"policy.preset={settings['preset']}",
        f"steps={settings['steps']}",
        f"batch_size={settings['batch_size']}",
        f"seed={settings['seed']}",
        f"demos.episodes={settings['demos']}",
        f"demos.seed={settings['demos_seed']}",
        f"train.checkpoint_every={settings['checkpoint_every']}",
        # explicit, so a different ddn-train default cannot change a cached run's meaning
        f"train.balance_until={settings.get('balance_until', 1.0)}",
        "eval.episodes=0",
    ]
    # ++: a field the policy config does not list (e.g. model.k) is added, not refused
    out += [f"++policy.{k}={v}" for k, v in flatten(settings["policy_overrides"]).items()]
    out += [f"task.{k}={v}" for k, v in settings.get("task_options", {}).items()]
    return out


def run_name(settings: dict) -> str:
    """The directory name of one training: readable fields, then the hash of them all."""
    task = settings["task"].replace("/", "_")
    name = f"{task}-{settings['policy']}-d{settings['demos']}"
    return f"{name}-s{settings['seed']}-{settings_key(settings)}"


def train(settings: dict, cache: Path, threads: int) -> Path:
    """Run (or resume) one training in a subprocess; returns its directory."""
    run_dir = cache / run_name(settings)
    if (run_dir / "train.json").is_file():
        return run_dir
    command = [sys.executable, "-m", "ddn_policy.cli.train", *overrides_of(settings)]
    command.append(f"out_dir={run_dir}")
    print(" ".join(command[2:]), flush=True)
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    last = [r for r in log if "loss" in r][-1]
    from ddn_policy.policies.factory import load_policy

    policy = load_policy(run_dir / "checkpoints" / "last")
    params = sum(p.numel() for p in policy.model.parameters())
    summary = {
        "settings": settings,
        "seconds_per_step": last["seconds"] / last["step"],
        "params": params,
        "final_loss": last["loss"],
    }
    # only the last checkpoint's optimizer state is needed (to resume); the others
    # keep their policy for the periodic evaluations
    for ckpt in checkpoints(run_dir)[:-1]:
        shutil.rmtree(ckpt / "training_state", ignore_errors=True)
    atomic_write_text(run_dir / "train.json", json.dumps(summary, indent=2))
    return run_dir


def checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    steps = [p for p in root.iterdir() if p.name.isdigit() and (p / "COMPLETE").is_file()]
    return sorted(steps, key=lambda p: int(p.name))


def evaluate(
    ckpt: Path, method: dict, spec, episodes: int, s: DictConfig, eval_options: dict | None = None
) -> dict:
    """One cached evaluation of a checkpoint (or of its refitted copy) with a method's
    inference settings (and the task options that apply to evaluation only, e.g.
    out-of-distribution starts)."""
    inference = method.get("inference", {})
    tagged = inference | (eval_options or {})
    tag = "-".join(f"{k}{v}" for k, v in sorted(tagged.items())) or "default"
    path = ckpt / f"eval-{tag}-{episodes}-{s.eval_seed}.json"
    if not path.is_file():
        from ddn_policy.evaluation.runner import run as run_episodes
        from ddn_policy.policies.factory import load_policy

        policy = load_policy(ckpt).to(s.device)
        policy.set_inference(**inference)
        info = run_episodes(
            policy, spec, episodes, seed=s.eval_seed, num_envs=s.num_envs, progress=False
        )
        atomic_write_text(path, json.dumps(info["aggregated"], indent=2))
    return json.loads(path.read_text())


def demo_strategy_mix(settings: dict, spec) -> float | None:
    """Share of strategy 0 in the training's demonstrations (None without strategies)."""
    from ddn_policy.cli.train import demos_path
    from ddn_policy.data import ReplayBuffer

    demos = {"path": None, "episodes": settings["demos"], "seed": settings["demos_seed"]}
    path = demos_path(OmegaConf.create({"demos": demos | {"noise": None}}), spec)
    buffer = ReplayBuffer(path, required_keys=("obs",))
    if "strategy" not in buffer.keys:
        return None
    firsts = [int(buffer.episode(i)["strategy"][0]) for i in range(buffer.num_episodes)]
    return firsts.count(0) / len(firsts)


def row_settings(
    s, task: str, demos: int, seed: int, name: str, method: dict, setting: dict
) -> tuple[dict, Path]:
    """One row's training settings and the committed file that holds the row."""
    settings = training_settings(
        s,
        task,
        demos,
        method["policy"],
        seed,
        setting.get("task", {}),
        method.get("policy_overrides"),
    )
    eval_options = setting.get("eval", {})
    refit = refit_settings(s, method)
    eval_settings = (
        {
            "inference": method.get("inference", {}),
            "episodes": s.episodes,
            "periodic_episodes": s.periodic_episodes,
            "eval_seed": s.eval_seed,
        }
        | ({"eval_options": eval_options} if eval_options else {})
        | ({"refit": refit} if refit else {})
    )
    row_name = f"{run_name(settings)}-{name}-{settings_key(eval_settings)}.json"
    return settings, Path(s.results_dir) / "rows" / row_name


def method_row(
    suite: str,
    task: str,
    demos: int,
    seed: int,
    name: str,
    method: dict,
    s,
    cache,
    setting: dict | None = None,
):
    """One (task, demos, seed, method) row; `setting` = {name, task: training options,
    eval: evaluation-only options} for suites with settings. None when the row is not
    committed and the suite asks for committed rows only."""
    from tasks import get_task

    setting = setting or {}
    task_options, eval_options = setting.get("task", {}), setting.get("eval", {})
    settings, row_path = row_settings(s, task, demos, seed, name, method, setting)
    if row_path.is_file():
        return json.loads(row_path.read_text())
    if s.get("committed_only", False):
        return None
    train_spec = get_task(task, **task_options)
    spec = get_task(task, **task_options, **eval_options)
    run_dir = train(settings, cache, s.threads)
    trained = json.loads((run_dir / "train.json").read_text())
    ckpts = checkpoints(run_dir)
    refit = refit_settings(s, method)
    periodic, final = [], None
    for ckpt in ckpts:
        last = ckpt == ckpts[-1]
        episodes = s.episodes if last else s.periodic_episodes
        source = refit_checkpoint(ckpt, refit) if refit else ckpt
        agg = evaluate(source, method, spec, episodes, s, eval_options)
        periodic.append(agg["pc_success"] / 100)
        final = agg if last else final
        print(
            f"{spec.name} {name} seed {seed} step {int(ckpt.name)}: {periodic[-1]:.2f}", flush=True
        )
    row = {
        "suite": suite,
        "task": task,
        "method": name,
        "seed": seed,
        "demos": demos,
        "success": final["pc_success"] / 100,
        "success_top5": float(np.mean(sorted(periodic)[-5:])),
        "periodic_success": periodic,
        "train_s_per_step": trained["seconds_per_step"],
        "params": trained["params"],
        "device": settings["device"],
        "config_hash": settings_key(settings),
    }
    if "name" in setting:
        row["setting"] = setting["name"]
    if refit:  # the final prior's held-out cross-entropy (nats), mean over layers
        report = json.loads((source / "refit_report.json").read_text())
        for when in ("before", "after"):
            row[f"prior_nll_{when}_refit"] = float(np.mean([r[f"val_nll_{when}"] for r in report]))
    if spec.has_route:
        row.update({f"route{k}": v for k, v in final["route_frequencies"].items()})
        row["switch_rate"] = final["switch_rate"]
        row["collision_rate"] = final["collision_rate"]
        mix = demo_strategy_mix(settings, train_spec)
        if mix is not None:
            row["demo_route0"] = mix
    row_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(row_path, json.dumps(row, indent=2))
    return row


def compare(cfg: DictConfig) -> tuple[list[dict], str]:
    """All rows of a comparison suite (training and evaluating what is not cached)."""
    s = cfg.suite
    methods = with_suite_inference(OmegaConf.to_container(s.methods), s.get("inference"))
    check_methods(methods)
    unknown = [m for m in s.run_methods if m not in methods]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(methods)}")
    cache = Path(s.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    if "settings" in s:  # seed by seed, every setting of a seed before the next seed
        settings = OmegaConf.to_container(s.settings)
        unknown = [n for n in s.run_settings if n not in settings]
        if unknown:
            raise ValueError(f"unknown settings {unknown}; known: {', '.join(settings)}")
        for seed in s.seeds:
            for setting_name in s.run_settings:
                setting = {"name": setting_name} | settings[setting_name]
                for task in s.tasks:
                    for name in s.run_methods:
                        rows.append(
                            method_row(
                                s.name,
                                task,
                                setting["demos"],
                                seed,
                                name,
                                methods[name],
                                s,
                                cache,
                                setting,
                            )
                        )
        groups, fields = ["setting", "task", "method"], HARD_FIELDS
    else:
        for task in s.tasks:
            for demos in s.demos:
                for seed in s.seeds:
                    for name in s.run_methods:
                        method = methods[name]
                        rows.append(method_row(s.name, task, demos, seed, name, method, s, cache))
        groups = ["task", "demos", "method"]
        fields = ["success", "success_top5", "route0", "route1", "switch_rate", "train_s_per_step"]
    rows = [r for r in rows if r is not None]  # committed_only: the finished rows
    table = markdown_table(aggregate(rows, groups, fields), [*groups, "seeds", *fields])
    return rows, table


HARD_FIELDS = ["success", "route0", "demo_route0", "switch_rate", "collision_rate"]
