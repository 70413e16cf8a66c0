"""Dense metrics against values worked out by hand."""

import pytest
import torch

from ddn_policy.evaluation.dense_metrics import (
    align_scale_shift,
    best_of_k,
    crps,
    depth_metrics,
    flow_metrics,
    interval_coverage,
    sparsification,
)


def test_depth_metrics_by_hand_and_alignment_undoes_scale_and_shift():
    truth = torch.tensor([1.0, 2.0, 4.0, 8.0]).view(1, 1, 2, 2)
    pred = torch.tensor([1.1, 2.0, 2.0, 8.0]).view(1, 1, 2, 2)
    mask = torch.tensor([[[True, True], [True, False]]])
    m = depth_metrics(pred, truth, mask)
    assert m["abs_rel"] == pytest.approx((0.1 + 0 + 0.5) / 3)
    assert m["rmse"] == pytest.approx(((0.01 + 0 + 4) / 3) ** 0.5)
    assert m["delta1"] == pytest.approx(2 / 3)  # 4 vs 2 is off by 2x
    affine = 0.5 * truth + 3.0
    everything = torch.ones(1, 2, 2, dtype=torch.bool)
    torch.testing.assert_close(align_scale_shift(affine, truth, everything), truth)
    assert depth_metrics(affine, truth, everything, aligned=True)["abs_rel"] < 1e-6


def test_flow_metrics_by_hand():
    truth = torch.zeros(1, 2, 1, 2)
    truth[0, 0, 0, 1] = 100.0
    pred = torch.zeros(1, 2, 1, 2)
    pred[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # 5 px off a zero flow: an outlier
    pred[0, 0, 0, 1] = 104.0  # 4 px off a 100 px flow: under 5%, not an outlier
    m = flow_metrics(pred, truth, torch.ones(1, 1, 2, dtype=torch.bool))
    assert m["epe"] == pytest.approx(4.5)
    assert m["fl"] == pytest.approx(0.5)


def test_best_of_k_pixel_level_is_never_worse_than_image_level():
    truth = torch.zeros(1, 1, 1, 2)
    hyps = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 1, 2)  # each half right
    mask = torch.ones(1, 1, 2, dtype=torch.bool)
    m = best_of_k("color", hyps, truth, mask)
    assert m["best_of_k_image"] == pytest.approx(0.5)
    assert m["best_of_k_pixel"] == pytest.approx(0.0)


def test_crps_of_a_point_ensemble_is_its_absolute_error_and_spread_is_rewarded():
    truth = torch.zeros(1, 1, 1, 1)
    mask = torch.ones(1, 1, 1, dtype=torch.bool)
    point = torch.full((1, 4, 1, 1, 1), 2.0)
    assert crps(point, truth, mask) == pytest.approx(2.0)
    spread = torch.tensor([1.0, 3.0, -1.0, 5.0]).view(1, 4, 1, 1, 1)  # same mean, wider
    pairs = 2 * (2 + 2 + 4 + 4 + 2 + 6)  # |Xi - Xj| over ordered pairs i != j
    fair = (1 + 3 + 1 + 5) / 4 - 0.5 * pairs / (4 * 3)
    assert crps(spread, truth, mask) == pytest.approx(fair)
    with pytest.raises(ValueError, match="at least 2"):
        crps(point[:, :1], truth, mask)


def test_interval_coverage_counts_truths_inside():
    hyps = torch.linspace(0, 1, 11).view(1, 11, 1, 1, 1).repeat(1, 1, 1, 1, 2)
    truth = torch.tensor([0.5, 0.95]).view(1, 1, 1, 2)
    assert interval_coverage(hyps, truth, torch.ones(1, 1, 2, dtype=torch.bool)) == 0.5


def test_sparsification_of_a_perfect_uncertainty_has_zero_ause():
    errors = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    perfect = sparsification(errors, errors)
    assert perfect["ause"] == pytest.approx(0.0, abs=1e-9)
    blind = sparsification(errors, -errors)  # removes the best pixels first
    assert blind["ause"] > 0.5
    assert perfect["curve"][0] == pytest.approx(1.0)  # normalized by the full mean error
