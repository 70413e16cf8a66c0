import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ddn_policy.data import MinMaxNormalizer, ReplayBuffer, ReplayBufferWriter, SequenceDataset
from ddn_policy.policies.factory import load_policy, make_policy
from ddn_policy.policies.guides import (
    Coherence,
    ForbidRoute,
    MaxStep,
    RankCombination,
    make_guide,
)
from ddn_policy.training.trainer import TrainConfig, Trainer
from tasks import get_task
from tasks.demos import collect_demos

SPEC = get_task("obstacle-reach")


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "or.zarr"
    collect_demos(SPEC, ReplayBufferWriter(path), episodes=20, seed=0, progress=False)
    return ReplayBuffer(path)


def tiny_policy(buffer, **model):
    norm = MinMaxNormalizer.fit({"obs": buffer["obs"], "action": buffer["action"]})
    cfg = {"name": "ddn", "preset": "tiny", "model": {"trunk": "mlp", **model}}
    return make_policy(cfg, SPEC, norm)


def test_predict_chunks_is_one_forward_in_env_units(demos):
    policy = tiny_policy(demos).eval()
    calls = []
    policy.model.ddn.blocks[0].register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    obs = torch.as_tensor(demos["obs"][:4]).float()[:, None].repeat(1, 2, 1)  # (4, To, Do)
    chunks, info = policy.predict_chunks(obs, n=16)
    assert chunks.shape == (4, 16, SPEC.pred_horizon, 2)
    assert calls == [64]  # the 4 x 16 hypotheses went through the network together
    assert info["uncertainty"].shape == (4,) and info["logprob"].shape == (4, 16)


def test_compiled_walk_matches_the_eager_one(demos):
    policy = tiny_policy(demos).eval()
    policy.set_inference(temperature=0.0)  # argmax of the prior: no random draw to differ
    obs = torch.as_tensor(demos["obs"][:3]).float()[:, None].repeat(1, 2, 1)  # (3, To, Do)
    eager, eager_info = policy.predict_chunks(obs, n=4)
    policy.set_inference(compile=True)
    compiled, info = policy.predict_chunks(obs, n=4)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(info["logprob"], eager_info["logprob"], rtol=1e-4, atol=1e-4)
    policy.set_inference(temperature=1.0)  # a new setting compiles its own walk
    drawn, _ = policy.predict_chunks(obs, n=64)
    assert drawn.shape == (3, 64, SPEC.pred_horizon, 2)
    assert drawn.std(dim=1).mean() > 0  # the compiled draws still differ between hypotheses


def test_queue_runs_the_model_once_per_action_horizon(demos):
    policy = tiny_policy(demos).eval()
    obs = demos["obs"][:3]
    for _ in range(2 * SPEC.action_horizon + 1):
        action = policy.select_action(obs)
    assert action.shape == (3, 2)
    assert policy.calls == 3  # steps 0, Ta and 2*Ta
    policy.reset()
    policy.select_action(obs)
    assert policy.calls == 1


def test_save_load_gives_identical_actions(demos, tmp_path):
    policy = tiny_policy(demos).eval()
    policy.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json",
        "model.safetensors",
        "normalizer.safetensors",
        "manifest.json",
    }
    loaded = load_policy(tmp_path)
    obs = torch.as_tensor(demos["obs"][:5]).float()[:, None].repeat(1, 2, 1)
    a, _ = policy.predict_chunks(obs, n=3, generator=torch.Generator().manual_seed(1))
    b, _ = loaded.predict_chunks(obs, n=3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b)
    (tmp_path / "normalizer.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="missing normalizer.safetensors"):
        load_policy(tmp_path)


def test_bad_observations_and_guides_are_refused(demos):
    policy = tiny_policy(demos).eval()
    with pytest.raises(
        ValueError, match=r"obs must be \(B, To, Do\) = \(B, 2, 8\), got \(3, 2, 7\)"
    ):
        policy.predict_chunks(torch.zeros(3, 2, 7))
    with pytest.raises(ValueError, match="floating point"):
        policy.predict_chunks(torch.zeros(3, 2, 8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"select_action expects \(B, 8\)"):
        policy.select_action(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="a guide must return scores of shape"):
        policy.predict_chunks(torch.zeros(3, 2, 8), guide=lambda c, o: torch.zeros(3))
    with pytest.raises(ValueError, match="unknown guide 'teleport'"):
        make_guide({"name": "teleport"}, (0, 2), 0.05)


def test_guides_score_what_they_say():
    obs = torch.zeros(1, 2, 8)  # disc, goal and pillar at the origin
    up = torch.zeros(1, 1, 16, 2)
    up[..., 1] = 1.0  # heads to +y: the left side
    down = -up
    chunks = torch.cat([up, down], 1)  # (1, 2, Tp, 2)
    forbid_left = ForbidRoute(0, hand_obs=(0, 2), action_to_position=0.05)
    assert forbid_left(chunks, obs).argmax().item() == 1
    assert MaxStep(0.5)(chunks * 0.1, obs).tolist() == [[0.0, 0.0]]
    combined = RankCombination([(forbid_left, 1.0), (MaxStep(0.5), 0.1)])
    assert combined(chunks, obs).argmax().item() == 1
    # The previous chunk went up; of the new hypotheses the one that goes on up is kept,
    # for every row of hypotheses drawn from the plan's one row.
    plan = up[:, 0]  # (1, Tp, 2)
    assert Coherence(plan, 8)(chunks, obs).argmax().item() == 0
    assert Coherence(plan, 8)(chunks.repeat(3, 1, 1, 1), obs).argmax(1).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="shift=16"):
        Coherence(plan, 16)


def test_short_training_lowers_the_loss_and_keeps_both_routes(demos, tmp_path):
    torch.manual_seed(0)
    policy = tiny_policy(demos, width=64, k=16)
    ds = SequenceDataset(demos, list(range(demos.num_episodes)), 2, 16, 8)
    trainer = Trainer(policy, ds, TrainConfig(steps=600, batch_size=64, log_every=25), tmp_path)
    trainer.fit()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    l2 = [np.mean(entry["layer_losses"]) for entry in log]
    assert l2[-1] < 0.5 * l2[0]  # the L2 part; the prior's cross-entropy falls more slowly
    assert (tmp_path / "checkpoints" / "last" / "COMPLETE").is_file()
    policy = load_policy(tmp_path / "checkpoints" / "last").eval()
    env = SPEC.make_env()
    starts = np.stack([env.reset(seed=1000 + i)[0] for i in range(10)])  # (10, Do)
    history = torch.as_tensor(np.repeat(starts[:, None], 2, 1)).float()  # (10, To, Do)
    gen = torch.Generator().manual_seed(0)
    chunks, _ = policy.predict_chunks(history, n=40, generator=gen)
    dy = (0.05 * chunks[..., 1].sum(-1)).numpy()  # lateral displacement over each chunk
    up, down = (dy > 0.05).mean(), (dy < -0.05).mean()
    assert up > 0.2 and down > 0.2, (up, down)
    # The same checkpoint, steered: forbidding the left route removes the upward chunks.
    guide = ForbidRoute(0, hand_obs=(0, 2), action_to_position=0.05)
    steered, _ = policy.predict_chunks(history, n=40, guide=guide, generator=gen)
    dy = (0.05 * steered[..., 1].sum(-1)).numpy()
    assert (dy > 0.05).mean() < 0.05 < (dy < -0.05).mean()
    # Coherence: each chunk after the first continues the previous chunk's plan for the
    # steps they share, far closer than independent draws do.
    ta = SPEC.action_horizon

    def plan_gap(coherence: bool) -> float:
        policy.set_inference(coherence=coherence)
        chunks = []

        def recorded(*args, **kwargs):
            out = type(policy).predict_chunks(policy, *args, **kwargs)
            chunks.append(out[0][:, 0])  # (B, Tp, Da)
            return out

        policy.predict_chunks = recorded
        envs = [SPEC.make_env() for _ in range(10)]
        obs = np.stack([e.reset(seed=1000 + i)[0] for i, e in enumerate(envs)])
        policy.reset()
        torch.manual_seed(0)
        for _ in range(4 * ta):
            actions = policy.select_action(obs)
            obs = np.stack([e.step(a)[0] for e, a in zip(envs, actions, strict=True)])
        del policy.predict_chunks
        gaps = [
            (new[:, :-ta] - old[:, ta:]).square().sum((1, 2))
            for old, new in zip(chunks, chunks[1:], strict=False)
        ]
        return torch.cat(gaps).mean().item()

    with_plan, without = plan_gap(True), plan_gap(False)
    assert with_plan < 0.5 * without, (with_plan, without)


def test_resume_continues_from_the_last_complete_checkpoint(demos, tmp_path):
    policy = tiny_policy(demos)
    ds = SequenceDataset(demos, [0, 1, 2], 2, 16, 8)
    cfg = TrainConfig(steps=20, batch_size=16, checkpoint_every=10, log_every=10)
    Trainer(policy, ds, cfg, tmp_path).fit()
    fresh = Trainer(tiny_policy(demos), ds, cfg, tmp_path)
    assert fresh.resume() and fresh.step == 20
    for a, b in zip(
        fresh.policy.model.state_dict().values(), policy.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b)


def test_periodic_rollouts_run_on_saved_ema_policies_and_are_logged(demos, tmp_path):
    from ddn_policy.evaluation.runner import run as run_episodes

    policy = tiny_policy(demos)
    ds = SequenceDataset(demos, [0, 1, 2], 2, 16, 8)
    cfg = TrainConfig(steps=6, batch_size=16, checkpoint_every=3, eval_every=3, log_every=3)
    seen = []

    def evaluate(policy_dir, step):
        seen.append((step, policy_dir.parent.name))
        info = run_episodes(load_policy(policy_dir), SPEC, 2, num_envs=2, progress=False)
        return {"success": info["aggregated"]["pc_success"]}

    Trainer(policy, ds, cfg, tmp_path).fit(evaluate)
    assert seen == [(3, "00000003"), (6, "00000006")]
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    evals = [entry for entry in log if "eval" in entry]
    assert [e["step"] for e in evals] == [3, 6] and "success" in evals[0]["eval"]


def test_evaluation_is_reproducible_whatever_ran_before(demos):
    from ddn_policy.evaluation.runner import run as run_episodes

    policy = tiny_policy(demos).eval()
    first = run_episodes(policy, SPEC, 3, seed=5, num_envs=3, progress=False)
    torch.rand(100)  # the global generator moves on, as training or plotting would move it
    policy.reset()
    second = run_episodes(policy, SPEC, 3, seed=5, num_envs=3, progress=False)
    assert first["per_episode"] == second["per_episode"]


def test_ddn_eval_draws_the_hypotheses_picture(demos, tmp_path):
    from omegaconf import OmegaConf

    from ddn_policy.cli.eval import run as eval_command

    tiny_policy(demos).save_pretrained(tmp_path / "pretrained_model")
    cfg = OmegaConf.load(Path(__file__).parents[1] / "configs" / "eval.yaml")
    cfg.merge_with(
        {
            "checkpoint": str(tmp_path / "pretrained_model"),
            "task": SPEC.name,
            "episodes": 2,
            "videos": 0,
            "num_envs": 2,
            "out_dir": str(tmp_path / "eval"),
            "hypotheses": 8,
        }
    )
    info = eval_command(cfg)
    assert len(info["per_episode"]) == 2
    assert (tmp_path / "eval" / "hypotheses.png").stat().st_size > 0
