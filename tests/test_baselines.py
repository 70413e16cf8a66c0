"""Diffusion Policy and regression baselines: the shared policy contract (save/load,
determinism, shapes), the diffusion loss, the scheduler round trip, and sizing."""

import numpy as np
import pytest
import torch
from torch import nn

from baselines.diffusion_policy import DiffusionPolicy, unet_preset
from ddn_policy.data import MinMaxNormalizer
from ddn_policy.policies.factory import load_policy, make_policy
from ddn_policy.training.trainer import TrainConfig, Trainer
from tasks import get_task

SPEC = get_task("obstacle-reach")
METHODS = {
    "ddn": {"name": "ddn", "preset": "tiny", "model": {"trunk": "mlp"}},
    "diffusion": {"name": "diffusion", "preset": "tiny", "sampler": "ddim", "inference_steps": 10},
    "mse": {"name": "mse", "preset": "tiny", "model": {"trunk": "conv"}},
}


def normalizer(spec=SPEC, seed=0):
    rng = np.random.default_rng(seed)
    return MinMaxNormalizer.fit(
        {
            "obs": rng.normal(size=(512, spec.obs_dim)),
            "action": rng.normal(size=(512, spec.action_dim)),
        }
    )


def obs_batch(rows=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, SPEC.obs_horizon, SPEC.obs_dim, generator=gen)


class Windows(torch.utils.data.Dataset):
    """A fixed, learnable mapping: the chunk is a function of the first observation."""

    def __init__(self, n=512):
        gen = torch.Generator().manual_seed(0)
        self.obs = torch.randn(n, SPEC.obs_horizon, SPEC.obs_dim, generator=gen)
        base = self.obs[:, 0, : SPEC.action_dim].tanh()  # (n, Da)
        ramp = torch.linspace(0, 1, SPEC.pred_horizon)[None, :, None]
        self.action = base[:, None] * ramp  # (n, Tp, Da)

    def __len__(self):
        return len(self.obs)

    def __getitem__(self, i):
        return {"obs": self.obs[i], "action": self.action[i]}


@pytest.mark.parametrize("method", METHODS)
def test_save_load_and_seeded_sampling_are_exact(method, tmp_path):
    policy = make_policy(METHODS[method], SPEC, normalizer()).eval()
    policy.save_pretrained(tmp_path)
    loaded = load_policy(tmp_path)
    assert type(loaded) is type(policy) and loaded.config == policy.config
    obs = obs_batch()
    a, info = policy.predict_chunks(obs, n=3, generator=torch.Generator().manual_seed(1))
    b, _ = loaded.predict_chunks(obs, n=3, generator=torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, SPEC.pred_horizon, SPEC.action_dim)
    assert info["uncertainty"].shape == (4,)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_obs_clip_makes_observations_beyond_the_range_act_as_at_its_edge(method):
    policy = make_policy(METHODS[method], SPEC, normalizer()).eval()
    stats = policy.normalizer.stats["obs"]
    span = stats["max"] - stats["min"]
    near = (stats["max"] + 0.5 * span).expand(2, SPEC.obs_horizon, -1)  # normalises to +2
    far = near + 5.0 * span  # normalises to +12

    def chunks(obs):
        return policy.predict_chunks(obs, n=2, generator=torch.Generator().manual_seed(3))[0]

    assert not torch.allclose(chunks(near), chunks(far))
    policy.set_inference(obs_clip=1.0)  # both act as at the range's edge (ddn-bench methods)
    torch.testing.assert_close(chunks(near), chunks(far), rtol=0, atol=0)
    with pytest.raises(ValueError, match="obs_clip=0.0"):
        policy.set_inference(obs_clip=0.0)
    assert policy.obs_clip == 1.0  # the bad value was not kept


@pytest.mark.parametrize("method", ["diffusion", "mse"])
def test_trainer_lowers_the_baselines_loss(method, tmp_path):
    torch.manual_seed(0)
    policy = make_policy(METHODS[method], SPEC, normalizer())
    cfg = TrainConfig(steps=150, batch_size=64, lr=3e-3, warmup_steps=10, log_every=10)
    trainer = Trainer(policy, Windows(), cfg, tmp_path)
    batch = {"obs": Windows().obs[:256], "action": Windows().action[:256]}

    def mean_loss():
        torch.manual_seed(1)  # the same noise and steps before and after
        with torch.no_grad():
            return float(torch.stack([policy.compute_loss(batch)[0] for _ in range(8)]).mean())

    before = mean_loss()
    trainer.fit()
    assert mean_loss() < 0.5 * before
    assert trainer.balancer is None  # nothing to split: the shared Trainer skips balancing


class NoiseOracle(nn.Module):
    """A denoiser that knows the clean chunk x0 and returns the exact noise in x_t."""

    def __init__(self, x0, alphas_cumprod):
        super().__init__()
        self.x0, self.ab = x0, alphas_cumprod
        self.dummy = nn.Parameter(torch.zeros(()))  # so the policy finds a device

    def forward(self, noisy, steps, obs):
        ab = self.ab[steps].view(-1, 1, 1)
        return (noisy - ab.sqrt() * self.x0) / (1 - ab).sqrt()


@pytest.mark.parametrize("sampler,steps", [("ddpm", 100), ("ddim", 10), ("ddim", 1)])
def test_scheduler_round_trip_recovers_the_chunk_from_a_perfect_noise_prediction(sampler, steps):
    policy = make_policy(
        {"name": "diffusion", "preset": "tiny", "sampler": sampler, "inference_steps": steps},
        SPEC,
        normalizer(),
    ).eval()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, SPEC.pred_horizon, SPEC.action_dim, generator=gen) * 1.6 - 0.8
    policy.model = NoiseOracle(x0, policy.train_scheduler.alphas_cumprod)
    chunks, _ = policy.predict_chunks(obs_batch(4), generator=gen)
    expected = policy.normalizer.unnormalize("action", x0)
    torch.testing.assert_close(chunks[:, 0], expected, rtol=0, atol=1e-4)
    # and add_noise at the last training step leaves almost nothing of x0
    noisy = policy.train_scheduler.add_noise(x0, torch.randn_like(x0), torch.tensor([99]))
    assert abs(float(torch.corrcoef(torch.stack([noisy.flatten(), x0.flatten()]))[0, 1])) < 0.2


def test_regression_has_one_answer_and_no_spread():
    policy = make_policy(METHODS["mse"], SPEC, normalizer()).eval()
    chunks, info = policy.predict_chunks(obs_batch(2), n=5)
    assert torch.equal(chunks[:, 0], chunks[:, 4])
    assert torch.all(info["uncertainty"] == 0)


@pytest.mark.parametrize("task", ["obstacle-reach", "metaworld/push"])
@pytest.mark.parametrize("preset", ["tiny", "small", "base"])
def test_diffusion_presets_match_the_ddn_parameter_count_within_20_percent(task, preset):
    spec = get_task(task)
    norm = normalizer(spec)

    def count(cfg):
        return sum(p.numel() for p in make_policy(cfg, spec, norm).model.parameters())

    dp = count({"name": "diffusion", "preset": preset})
    for trunk in ("mlp", "conv"):
        ddn = count({"name": "ddn", "preset": preset, "model": {"trunk": trunk}})
        assert 0.8 <= dp / ddn <= 1.2, (trunk, dp, ddn)


def test_bad_baseline_settings_are_refused(tmp_path):
    norm = normalizer()
    with pytest.raises(ValueError, match="sampler='ddpm' runs all 100 training steps"):
        make_policy({"name": "diffusion", "preset": "tiny", "inference_steps": 10}, SPEC, norm)
    with pytest.raises(ValueError, match="sampler must be one of"):
        make_policy({"name": "diffusion", "preset": "tiny", "sampler": "euler"}, SPEC, norm)
    with pytest.raises(ValueError, match=r"pred_horizon=10 must be divisible by 4"):
        unet_preset("small", obs_dim=8, action_dim=2, pred_horizon=10)
    with pytest.raises(ValueError, match="unknown policy 'dp'; known: ddn, diffusion, mse"):
        make_policy({"name": "dp"}, SPEC, norm)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        make_policy({"name": "mse", "preset": "huge"}, SPEC, norm)
    make_policy(METHODS["mse"], SPEC, norm).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="describes policy 'mse', not 'diffusion'"):
        DiffusionPolicy.from_pretrained(tmp_path)
