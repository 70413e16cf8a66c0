"""Property-based tests (hypothesis): for any shapes, K, L, selector, data and damage,
the answer is right or the error is ours and names the problem; never a crash deep
inside torch, zarr or numcodecs, and never a silently wrong result."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ddn_policy.core import Guided, Prior, Uniform
from ddn_policy.core.layer import DiscreteDistributionLayer
from ddn_policy.data import MinMaxNormalizer, ReplayBuffer, ReplayBufferWriter
from ddn_policy.data.replay_buffer import ReplayBufferError
from tests.helpers import tiny_net

SPATIAL = st.sampled_from([(), (5,), (3, 4)])


@given(
    k=st.integers(2, 6),
    channels=st.integers(1, 3),
    spatial=SPATIAL,
    in_features=st.integers(2, 9),
    batch=st.integers(1, 4),
    leak=st.booleans(),
    prior=st.booleans(),
)
def test_layer_shapes_choices_and_refusals(k, channels, spatial, in_features, batch, leak, prior):
    layer = DiscreteDistributionLayer(in_features, (channels, *spatial), k, leak=leak, prior=prior)
    h = torch.randn(batch, in_features, *spatial)
    prev = torch.randn(batch, channels, *spatial)
    target = torch.randn(batch, channels, *spatial)
    cands = layer.candidates(h, prev)
    assert cands.shape == (batch, k, channels, *spatial)
    out = layer.train_step(h, prev, target)
    assert out.idx.shape == (batch,) and ((out.idx >= 0) & (out.idx < k)).all()
    assert torch.isfinite(out.loss) and int(layer.count.sum()) == batch
    nearest = layer.distances(cands, target).argmin(1)  # no dropout: the nearest is taken
    assert torch.equal(out.idx, nearest)
    with pytest.raises(ValueError, match=r"features must be"):
        layer.candidates(torch.randn(batch, in_features + 1, *spatial), prev)
    with pytest.raises(ValueError, match=r"target must be"):
        layer.distances(cands, torch.randn(batch, channels + 1, *spatial))


@given(k=st.integers(-2, 1))
def test_layer_refuses_a_k_without_a_choice(k):
    with pytest.raises(ValueError, match=f"got k={k}"):
        DiscreteDistributionLayer(4, (2,), k)


SELECTORS = st.sampled_from(["uniform", "prior", "guided", "guided-greedy"])


@given(
    layers=st.integers(1, 4),
    k=st.integers(2, 6),
    dim=st.integers(1, 3),
    n=st.integers(1, 5),
    selector=SELECTORS,
    seed=st.integers(0, 2**16),
)
def test_network_walks_stay_in_the_tree(layers, k, dim, n, selector, seed):
    torch.manual_seed(seed)
    net = tiny_net(sample_dim=dim, layers=layers, k=k, prior=True).eval()
    score = lambda cands, ctx: -cands.flatten(2).norm(dim=2)  # noqa: E731  toward 0
    chosen = {
        "uniform": Uniform(),
        "prior": Prior(1.0),
        "guided": Guided(score, top_k=2),
        "guided-greedy": Guided(score, top_k=1),
    }[selector]
    with torch.no_grad():
        walk = net.sample(
            n, guide=chosen, generator=torch.Generator().manual_seed(seed), return_walk=True
        )
    assert walk.x.shape == (n, dim) and torch.isfinite(walk.x).all()
    assert walk.codes.shape == (n, layers) and ((walk.codes >= 0) & (walk.codes < k)).all()
    with torch.no_grad():
        assert torch.allclose(net.decode(walk.codes), walk.x, atol=1e-6)
        target = torch.randn(n, dim)
        codes = net.encode(target)
        # greedy guidance by "closeness to the target" is exactly the nearest-node walk
        toward = lambda cands, ctx: -ctx.layer.distances(cands, target)  # noqa: E731
        steered = net.sample(1, guide=Guided(toward, top_k=1)) if n == 1 else None
        assert torch.allclose(net.decode(codes), net.reconstruct(target), atol=1e-6)
        if steered is not None:
            assert torch.allclose(steered, net.reconstruct(target), atol=1e-6)


@given(
    layers=st.integers(1, 3),
    k=st.integers(2, 5),
    bad=st.sampled_from(["extra_column", "missing_row", "nan", "list"]),
)
def test_a_guide_with_a_wrong_answer_is_named(layers, k, bad):
    net = tiny_net(sample_dim=2, layers=layers, k=k).eval()

    def guide(cands, ctx):
        scores = torch.zeros(ctx.batch, ctx.k)
        if bad == "extra_column":
            return torch.zeros(ctx.batch, ctx.k + 1)
        if bad == "missing_row":
            return scores[1:]
        if bad == "nan":
            return scores.index_fill(1, torch.tensor([0]), float("nan"))
        return scores.tolist()

    with pytest.raises(ValueError, match=r"a guide (must return scores of shape|returned NaN)"):
        net.sample(3, guide=guide)


@given(layers=st.integers(1, 4), k=st.integers(2, 5), wrong=st.integers(1, 6))
def test_codes_of_the_wrong_length_or_range_are_refused(layers, k, wrong):
    net = tiny_net(sample_dim=2, layers=layers, k=k).eval()
    if wrong != layers:
        with pytest.raises(ValueError, match="codes"):
            net.decode(torch.zeros(2, wrong, dtype=torch.long))
    with pytest.raises(ValueError, match="codes"):
        net.decode(torch.full((2, layers), k, dtype=torch.long))


FINITE = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@given(
    rows=st.integers(1, 12),
    dims=st.integers(1, 4),
    data=st.data(),
)
def test_normalizer_round_trips_and_bounds_the_fitted_data(rows, dims, data):
    values = np.array(
        data.draw(
            st.lists(st.lists(FINITE, min_size=dims, max_size=dims), min_size=rows, max_size=rows)
        ),
        dtype=np.float32,
    )
    norm = MinMaxNormalizer.fit({"x": values})
    x = torch.as_tensor(values)
    y = norm.normalize("x", x)
    assert torch.isfinite(y).all() and (y.abs() <= 1.0 + 1e-4).all()
    span = torch.as_tensor(values.max(0) - values.min(0)).clamp_min(1.0)
    assert ((norm.unnormalize("x", y) - x).abs() <= 1e-5 * span + 1e-3).all()
    with pytest.raises(ValueError, match="dims in its last axis"):
        norm.normalize("x", torch.zeros(rows, dims + 1))
    bad = values.copy()
    bad[data.draw(st.integers(0, rows - 1)), 0] = data.draw(st.sampled_from([np.nan, np.inf]))
    with pytest.raises(ValueError, match="not finite"):
        MinMaxNormalizer.fit({"x": bad})


def write_store(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    writer = ReplayBufferWriter(path)
    episodes = []
    for length in (7, 5, 9):
        ep = {
            "obs": rng.normal(size=(length, 3)).astype(np.float32),
            "action": rng.normal(size=(length, 2)).astype(np.float32),
        }
        writer.add_episode(ep)
        episodes.append(ep)
    return {k: np.concatenate([e[k] for e in episodes]) for k in ("obs", "action")}


DAMAGE = st.sampled_from(["flip", "truncate", "delete", "garbage", "zero"])


@pytest.mark.filterwarnings("ignore:Object at .* is not recognized")
@settings(max_examples=max(150, settings.default.max_examples))  # ~30 files x 5 damages
@given(which=st.integers(0, 10**6), damage=DAMAGE, where=st.floats(0, 1), byte=st.integers(1, 255))
def test_a_damaged_replay_buffer_reads_right_or_fails_by_name(which, damage, where, byte):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.zarr"
        original = write_store(path)
        files = sorted(p for p in path.rglob("*") if p.is_file())
        victim = files[which % len(files)]
        raw = bytearray(victim.read_bytes())
        pos = min(int(where * len(raw)), max(len(raw) - 1, 0))
        if damage == "delete":
            victim.unlink()
        elif damage == "truncate":
            victim.write_bytes(bytes(raw[:pos]))
        elif damage == "garbage":
            victim.write_bytes(bytes([byte]) * max(len(raw), 1))
        elif raw:
            raw[pos] = raw[pos] ^ byte if damage == "flip" else 0
            victim.write_bytes(bytes(raw))
        try:
            buffer = ReplayBuffer(path)
        except ReplayBufferError as err:
            assert str(path) in str(err)
            return
        # read without complaint: then every committed row must be the original one
        n = buffer.num_steps
        assert buffer.num_episodes == 3, f"{damage} of {victim.name} dropped episodes silently"
        for key in ("obs", "action"):
            np.testing.assert_array_equal(buffer[key], original[key][:n])
