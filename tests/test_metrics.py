"""Tests for mrisr.evaluation.metrics, checked against scikit-image as the reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from skimage.metrics import (
    normalized_root_mse,
    peak_signal_noise_ratio,
    structural_similarity,
)

from mrisr.errors import ConfigError, InputError
from mrisr.evaluation.metrics import (
    PROTOCOLS,
    Protocol,
    evaluate_case,
    get_protocol,
    nrmse,
    psnr,
    ssim,
    ssim_map,
)

TOL = 1e-6


# --------------------------------------------------------------------------------------------
# test images
# --------------------------------------------------------------------------------------------

def _phantom(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Ellipsoids of different intensity on a dark background, like a magnitude MR image."""
    axes = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    img = np.zeros(shape)
    for _ in range(4):
        centre = rng.uniform(-0.4, 0.4, len(shape))
        radii = rng.uniform(0.2, 0.7, len(shape))
        r2 = sum(((a - c) / r) ** 2 for a, c, r in zip(axes, centre, radii))
        img[r2 < 1] += rng.uniform(100, 400)
    return img


def _pair(shape: tuple[int, ...], seed: int, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(pred, target): target is noise or a phantom; pred is a degraded target."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        target = rng.uniform(0, 1000, shape)
        pred = rng.uniform(0, 1000, shape)
    else:
        target = _phantom(shape, rng)
        # smooth-ish error plus noise, the typical look of an SR reconstruction
        pred = 0.9 * target + 0.1 * np.roll(target, 1, axis=0) + rng.normal(0, 20, shape)
        pred = np.abs(pred)
    return pred, target


def _crop(a: np.ndarray, pad: int) -> np.ndarray:
    return a[tuple(slice(pad, n - pad) for n in a.shape)]


shapes_2d = st.tuples(st.integers(7, 40), st.integers(7, 40))
shapes_3d = st.tuples(st.integers(7, 14), st.integers(7, 14), st.integers(7, 14))
shapes = st.one_of(shapes_2d, shapes_3d)
kinds = st.sampled_from(["random", "structured"])
seeds = st.integers(0, 2**31 - 1)


# --------------------------------------------------------------------------------------------
# agreement with skimage
# --------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=seeds, kind=kinds)
def test_matches_skimage(shape, seed, kind):
    pred, target = _pair(shape, seed, kind)
    L = float(target.max() - target.min())
    assert psnr(pred, target, L) == pytest.approx(
        peak_signal_noise_ratio(target, pred, data_range=L), abs=TOL)
    assert nrmse(pred, target) == pytest.approx(normalized_root_mse(target, pred), abs=TOL)
    assert ssim(pred, target, L) == pytest.approx(
        structural_similarity(target, pred, data_range=L), abs=TOL)


@settings(max_examples=20, deadline=None)
@given(shape=shapes, seed=seeds, win_size=st.sampled_from([3, 5, 7]))
def test_ssim_map_and_win_size_match_skimage(shape, seed, win_size):
    pred, target = _pair(shape, seed, "structured")
    L = 500.0
    ref_mean, ref_map = structural_similarity(
        target, pred, data_range=L, win_size=win_size, full=True)
    ours = ssim_map(pred, target, L, win_size=win_size)
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float64
    # the whole map, border included, follows skimage's 'reflect' padding
    np.testing.assert_allclose(ours.numpy(), ref_map, rtol=0, atol=TOL)
    assert ssim(pred, target, L, win_size=win_size) == pytest.approx(ref_mean, abs=TOL)


def test_ssim_large_offset_stays_accurate():
    # images on a large pedestal: E[x^2] - E[x]^2 cancellation is where a naive filter loses digits
    pred, target = _pair((64, 64), 3, "structured")
    pred, target = pred + 1e6, target + 1e6
    L = float(target.max() - target.min())
    ref = structural_similarity(target, pred, data_range=L)
    assert ssim(pred, target, L) == pytest.approx(ref, abs=1e-6)


def test_torch_and_float32_inputs_match_numpy():
    pred, target = _pair((33, 29), 5, "structured")
    L = float(target.max() - target.min())
    ref = ssim(pred, target, L)
    assert ssim(torch.from_numpy(pred), torch.from_numpy(target), L) == ref
    # float32 input is upcast, so only the float32 rounding of the data itself remains
    p32, t32 = torch.from_numpy(pred).float(), torch.from_numpy(target).float()
    assert ssim(p32, t32, L) == pytest.approx(
        structural_similarity(t32.double().numpy(), p32.double().numpy(), data_range=L), abs=TOL)
    # non-contiguous, big-endian numpy (as NIfTI loaders can return) is accepted
    assert ssim(pred.T.copy().T, target.astype(">f8"), L) == pytest.approx(ref, abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    pred, target = _pair((12, 11, 10), 9, "structured")
    L = float(target.max() - target.min())
    p, t = torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda()
    assert ssim(p, t, L) == pytest.approx(ssim(pred, target, L), abs=1e-10)
    assert psnr(p, t, L) == pytest.approx(psnr(pred, target, L), abs=1e-10)
    assert ssim_map(p, t, L).device.type == "cuda"


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(shape=shapes, seed=seeds)
def test_masked_metrics(shape, seed):
    pred, target = _pair(shape, seed, "structured")
    rng = np.random.default_rng(seed + 1)
    mask = rng.random(shape) < 0.5
    pad = 3
    # guarantee at least one scored voxel inside the SSIM interior
    mask[tuple(n // 2 for n in shape)] = True
    L = 400.0

    assert psnr(pred, target, L, mask=mask) == pytest.approx(
        peak_signal_noise_ratio(target[mask], pred[mask], data_range=L), abs=TOL)
    assert nrmse(pred, target, mask=mask) == pytest.approx(
        normalized_root_mse(target[mask], pred[mask]), abs=TOL)

    _, ref_map = structural_similarity(target, pred, data_range=L, full=True)
    expected = _crop(ref_map, pad)[_crop(mask, pad)].mean()
    assert ssim(pred, target, L, mask=mask) == pytest.approx(expected, abs=TOL)


def test_mask_excludes_border_of_ssim_map():
    pred, target = _pair((20, 20), 1, "structured")
    border_only = np.zeros((20, 20), bool)
    border_only[:3, :] = True
    with pytest.raises(InputError, match="interior"):
        ssim(pred, target, 100.0, mask=border_only)
    # a full mask must give exactly the unmasked (cropped) mean
    full = np.ones((20, 20), bool)
    assert ssim(pred, target, 100.0, mask=full) == pytest.approx(ssim(pred, target, 100.0),
                                                                 abs=1e-14)


@pytest.mark.parametrize("bad, match", [
    (np.ones((8, 8), np.uint8), "boolean"),
    (np.ones((8, 9), bool), "mask shape"),
    (np.zeros((8, 8), bool), "no voxels"),
])
def test_bad_masks(bad, match):
    x = np.random.default_rng(0).random((8, 8))
    with pytest.raises(InputError, match=match):
        psnr(x, x + 1, 1.0, mask=bad)


# --------------------------------------------------------------------------------------------
# edge cases and validation
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(16, 16), (9, 10, 11)])
def test_identical_images(shape):
    _, target = _pair(shape, 0, "structured")
    assert psnr(target, target, 400.0) == math.inf
    assert ssim(target, target, 400.0) == 1.0
    assert nrmse(target, target) == 0.0
    out = evaluate_case(target, target, "dualarbnet")
    assert out["psnr"] == math.inf and out["ssim"] == 1.0 and out["ssim_range2"] == 1.0


def test_input_errors():
    a = np.zeros((10, 10))
    with pytest.raises(InputError, match="does not match"):
        psnr(a, np.zeros((10, 11)), 1.0)
    with pytest.raises(InputError, match="does not match"):
        ssim(a, np.zeros((10, 11)), 1.0)
    with pytest.raises(InputError, match="2D .* or 3D"):
        ssim(np.zeros(20), np.zeros(20), 1.0)
    with pytest.raises(InputError, match="2D .* or 3D"):
        ssim(np.zeros((8,) * 4), np.zeros((8,) * 4), 1.0)
    with pytest.raises(InputError, match="smaller than the SSIM window"):
        ssim(np.zeros((6, 20)), np.zeros((6, 20)), 1.0)
    with pytest.raises(InputError, match="odd"):
        ssim(a, a, 1.0, win_size=4)
    with pytest.raises(InputError, match="data_range"):
        ssim(a, a, 0.0)
    with pytest.raises(InputError, match="data_range"):
        psnr(a, a, float("nan"))
    with pytest.raises(InputError, match="complex"):
        nrmse(a.astype(complex), a)
    nan = a.copy()
    nan[3, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        psnr(nan, a, 1.0)
    # messages are single-line, as the CLI prints them verbatim
    with pytest.raises(InputError) as info:
        ssim(a, np.zeros((10, 11)), 1.0)
    assert "\n" not in str(info.value)


def test_data_range_has_no_default():
    with pytest.raises(TypeError):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        psnr(np.zeros((8, 8)), np.zeros((8, 8)))  # type: ignore[call-arg]


# --------------------------------------------------------------------------------------------
# protocols
# --------------------------------------------------------------------------------------------

def test_protocol_registry():
    assert set(PROTOCOLS) == {"dualarbnet", "fastmri", "brainmask"}
    assert all(isinstance(d, str) and d for d in PROTOCOLS.values())
    assert isinstance(get_protocol("fastmri"), Protocol)
    with pytest.raises(TypeError):
        PROTOCOLS["new"] = "read-only"  # type: ignore[index]


def test_unknown_protocol():
    x = np.ones((8, 8))
    with pytest.raises(ConfigError, match=r"unknown metric protocol 'nope' \(known: .*fastmri"):
        evaluate_case(x, x, "nope")


@pytest.mark.parametrize("shape", [(48, 40), (12, 13, 14)])
def test_dualarbnet_protocol(shape):
    pred, target = _pair(shape, 11, "structured")
    peak = target.max() - target.min()
    out = evaluate_case(pred, target, "dualarbnet")
    assert set(out) == {"psnr", "ssim", "nrmse", "ssim_range2"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["psnr"] == pytest.approx(
        peak_signal_noise_ratio(target, pred, data_range=peak), abs=TOL)
    assert out["ssim"] == pytest.approx(
        structural_similarity(target, pred, data_range=peak), abs=TOL)
    assert out["nrmse"] == pytest.approx(normalized_root_mse(target, pred), abs=TOL)
    # reference code: divide by max(target), then skimage<=0.19's implicit float range of 2
    tmax = target.max()
    assert out["ssim_range2"] == pytest.approx(
        structural_similarity(target / tmax, pred / tmax, data_range=2.0), abs=TOL)


@pytest.mark.parametrize("seed", range(5))
def test_ssim_range2_is_inflated(seed):
    # With min(target) = 0 the correct range after max-normalisation is 1, so data_range=2
    # quadruples C1 and C2 and pulls every local SSIM towards 1: the published number is higher
    # than the correctly ranged one for any imperfect reconstruction.
    pred, target = _pair((64, 64), seed, "structured")
    out = evaluate_case(pred, target, "dualarbnet")
    assert out["ssim_range2"] > out["ssim"] + 1e-3


def test_fastmri_protocol_volume_is_mean_of_slice_ssims():
    pred, target = _pair((5, 20, 24), 4, "structured")
    maxval = target.max()
    out = evaluate_case(pred, target, "fastmri")
    assert set(out) == {"psnr", "ssim", "nrmse"}
    expected_ssim = np.mean([
        structural_similarity(target[k], pred[k], data_range=maxval) for k in range(5)])
    assert out["ssim"] == pytest.approx(expected_ssim, abs=TOL)
    assert out["psnr"] == pytest.approx(
        peak_signal_noise_ratio(target, pred, data_range=maxval), abs=TOL)
    assert out["nrmse"] == pytest.approx(normalized_root_mse(target, pred), abs=TOL)
    # the peak is max(target), not max - min: shifting target's minimum must not change it
    pred2, target2 = pred + 50.0, target + 50.0
    out2 = evaluate_case(pred2[0], target2[0], "fastmri")
    assert out2["psnr"] == pytest.approx(
        peak_signal_noise_ratio(target2[0], pred2[0], data_range=target2[0].max()), abs=TOL)


def test_brainmask_protocol():
    pred, target = _pair((30, 32), 8, "structured")
    mask = target > 0
    with pytest.raises(InputError, match="needs a mask"):
        evaluate_case(pred, target, "brainmask")
    out = evaluate_case(pred, target, "brainmask", mask=mask)
    assert set(out) == {"psnr", "ssim", "nrmse"}
    peak = target[mask].max() - target[mask].min()
    assert peak < target.max() - target.min()  # background zeros are outside the mask
    assert out["psnr"] == pytest.approx(
        peak_signal_noise_ratio(target[mask], pred[mask], data_range=peak), abs=TOL)
    _, ref_map = structural_similarity(target, pred, data_range=peak, full=True)
    assert out["ssim"] == pytest.approx(_crop(ref_map, 3)[_crop(mask, 3)].mean(), abs=TOL)


def test_constant_target_rejected_by_max_minus_min_protocols():
    x = np.full((10, 10), 5.0)
    with pytest.raises(InputError, match="constant"):
        evaluate_case(x + 1, x, "dualarbnet")
