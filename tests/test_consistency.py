"""Data-consistency projection: degrading the projected output gives the input back."""
import json

import numpy as np
import pytest
import torch

from mrisr.cli.main import main
from mrisr.data.phantom import make_brain_phantom
from mrisr.degradation import (centered_fft, degrade, degrade_volume, kspace_lowpass_mask,
                               kspace_resize, spline_resize, thick_slice)
from mrisr.degradation import consistency as dc
from mrisr.degradation.image import slice_profile_weights
from mrisr.errors import InputError
from mrisr.inference import upscale as up
from mrisr.io import save_nifti
from mrisr.io.nifti import Volume
from mrisr.models.registry import weights_path


def complex_noise(rng, shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def kspace_degrade(x, lr_shape, axes):
    """The grid-aligned k-space crop along ``axes`` only (the others are batch axes)."""
    for a in axes:
        x = np.moveaxis(kspace_resize(np.moveaxis(x, a, -1), (lr_shape[a],)), -1, a)
    return x


@pytest.fixture(scope="module")
def phantom():
    return make_brain_phantom(shape=(64, 64, 24), voxel_size=(1.0, 1.0, 1.0), seed=1)


@pytest.mark.parametrize("hr,lr", [((37, 40), (19, 17)), ((64, 48), (32, 48)),
                                   ((33, 33), (13, 33)), ((40, 41), (16, 27))])
def test_kspace_complex_reproduces_input_and_only_replaces_the_kept_block(rng, hr, lr):
    sr, y = complex_noise(rng, hr), complex_noise(rng, lr)
    p = dc.kspace_consistency(sr, y)
    assert p.dtype == np.complex64 and p.shape == hr
    np.testing.assert_allclose(kspace_resize(p, lr), y, atol=2e-5 * np.abs(y).max())
    # Outside the block that the crop keeps, the spectrum of sr is untouched.
    outside = ~kspace_lowpass_mask(hr, lr).numpy()
    k_sr, k_p = centered_fft(torch.from_numpy(sr), 2), centered_fft(torch.from_numpy(p), 2)
    np.testing.assert_allclose(k_p.numpy()[outside], k_sr.numpy()[outside], atol=1e-5)
    assert np.abs(k_p.numpy()[~outside] - k_sr.numpy()[~outside]).max() > 0.1
    # A second projection changes nothing.
    np.testing.assert_allclose(dc.kspace_consistency(p, y), p, atol=2e-5 * np.abs(p).max())


def test_kspace_acts_only_along_upscaled_axes(rng):
    sr, y = complex_noise(rng, (20, 18, 5)), complex_noise(rng, (10, 7, 5))
    p = dc.kspace_consistency(sr, y)
    np.testing.assert_allclose(kspace_degrade(p, y.shape, (0, 1)), y, atol=1e-5 * 10)
    for k in range(5):  # the slices are independent
        np.testing.assert_allclose(p[..., k], dc.kspace_consistency(sr[..., k], y[..., k]),
                                   atol=1e-5)
    with pytest.raises(InputError, match="not one of the projected axes"):
        dc.kspace_consistency(sr, y, axes=(0,))


@pytest.mark.parametrize("shape,scale", [((64, 64), 2), ((64, 64), 2.5), ((63, 50), 3),
                                         ((63, 50), (2, 1.5))])
def test_kspace_magnitude_moves_towards_truth_and_input(phantom, shape, scale):
    truth = np.ascontiguousarray(phantom.t2w[: shape[0], : shape[1], 12], dtype=np.float32)
    lr = np.abs(degrade(truth, scale, "kspace")).astype(np.float32)  # NIfTI holds magnitudes
    sr = np.clip(spline_resize(lr, shape, order=3), 0, None)
    p = dc.kspace_consistency(sr, lr)
    assert p.dtype == np.float32 and p.min() >= 0
    before = dc.consistency_mismatch(sr, lr, "kspace")
    after = dc.consistency_mismatch(p, lr, "kspace")
    assert after < 0.5 * before, (before, after)
    assert np.linalg.norm(p - truth) <= np.linalg.norm(sr - truth)
    # Magnitudes are consistent only approximately: a second projection moves much less.
    q = dc.kspace_consistency(p, lr)
    assert np.linalg.norm(q - p) < 0.5 * np.linalg.norm(p - sr)


@pytest.mark.parametrize("profile", ["box", "gaussian"])
@pytest.mark.parametrize("n,m", [(30, 10), (31, 7), (30, 13), (31, 31)])
def test_slice_profile_reproduces_input_with_minimum_norm(rng, profile, n, m):
    z = np.linspace(0, 3, n)
    truth = (5 + np.sin(z)[None, None, :] + rng.random((4, 3, 1))).astype(np.float64)
    y = thick_slice(truth, n / m, axis=2, profile=profile)
    sr = rng.random((4, 3, n))
    p = dc.slice_profile_consistency(sr, y, axis=2, profile=profile)
    np.testing.assert_allclose(thick_slice(p, n / m, 2, profile), y, atol=1e-10)
    np.testing.assert_allclose(dc.slice_profile_consistency(p, y, 2, profile), p, atol=1e-10)
    # Minimum norm: the correction lies in the row space of W (no null-space component).
    w = slice_profile_weights(n, n / m, profile)
    corr = p - sr
    null_part = corr - corr @ w.T @ np.linalg.pinv(w).T  # (I - W^+ W) along z
    assert np.abs(null_part).max() < 1e-8
    # The spline-spread correction is as consistent, and no smaller.
    s = dc.slice_profile_consistency(sr, y, 2, profile, correction="spline")
    np.testing.assert_allclose(thick_slice(s, n / m, 2, profile), y, atol=1e-10)
    assert np.linalg.norm(s - sr) >= np.linalg.norm(corr) - 1e-9


@pytest.mark.parametrize("profile,factor", [("box", 3), ("box", 2.5), ("gaussian", 4)])
def test_slice_profile_moves_towards_truth(phantom, profile, factor):
    truth = phantom.t2w.astype(np.float32)
    lr = thick_slice(truth, factor, axis=2, profile=profile)
    sr = np.clip(spline_resize(lr, (truth.shape[2],), order=3), 0, None)
    p = dc.project(sr, lr, f"slice_{profile}")
    assert p.min() >= 0
    assert np.linalg.norm(p - truth) < np.linalg.norm(sr - truth)
    assert dc.consistency_mismatch(p, lr, f"slice_{profile}") < \
        0.5 * dc.consistency_mismatch(sr, lr, f"slice_{profile}")
    # Exact on the lines through the volume where nothing was clipped at 0.
    kept = (p > 0).all(axis=2)
    assert kept.mean() > 0.3
    np.testing.assert_allclose(thick_slice(p, factor, 2, profile)[kept], lr[kept],
                               atol=1e-5 * lr.max())


def test_combined_kspace_in_plane_and_slice_profile_is_exact(rng):
    sr, y = complex_noise(rng, (24, 21, 30)), complex_noise(rng, (12, 9, 6))
    report = {}
    p = dc.project(sr, y, "auto", report=report)
    assert report["kspace_axes"] == [0, 1] and report["slice_axis"] == 2
    assert report["slice_profile"] == "box" and report["mismatch_after"] < 1e-5
    degraded = thick_slice(kspace_degrade(p, (12, 9, 30), (0, 1)), 5, axis=2)
    np.testing.assert_allclose(degraded, y, atol=2e-5 * np.abs(y).max())


def test_auto_rule_and_errors():
    def plan(sr, lr, model="auto"):
        return dc.resolve(model, sr, lr)
    assert plan((480, 480, 155), (240, 240, 155)) == {
        "model": "kspace", "kspace_axes": [0, 1], "slice_axis": None, "slice_profile": None}
    p = plan((240, 240, 155), (240, 240, 31))
    assert p["model"] == "slice_box" and p["slice_axis"] == 2 and p["kspace_axes"] == []
    p = plan((400, 400, 150), (220, 220, 30))  # 0.9 mm in-plane, 5 mm slices -> 0.5 mm
    assert p["slice_axis"] == 2 and p["kspace_axes"] == [0, 1]
    assert plan((64, 64, 64), (32, 32, 32))["kspace_axes"] == [0, 1, 2]
    assert plan((64, 64, 48), (32, 32, 32))["slice_axis"] is None  # 2 vs 1.5: not thick
    assert plan((64, 40, 40), (32, 40, 40))["slice_axis"] == 0
    assert plan((64, 40, 40), (32, 40, 40), "kspace")["kspace_axes"] == [0]
    assert plan((8, 8), (4, 4), "none")["model"] == "none"
    with pytest.raises(InputError, match="no single thick axis"):
        plan((8, 8, 4), (4, 4, 4), "slice_box")
    with pytest.raises(InputError, match="unknown consistency model"):
        plan((8, 8), (4, 4), "sinc")
    with pytest.raises(InputError, match="at least as fine"):
        plan((4, 8), (8, 8))
    x, y = np.full((6, 6), 2.0, np.float32), np.full((6, 6), 3.0, np.float32)
    np.testing.assert_array_equal(dc.project(x, y), y)  # no upscaled axis: identity model
    np.testing.assert_array_equal(dc.project(x, y, "none"), x)


def test_blocks_in_place_and_torch_equal_the_plain_projection(rng, monkeypatch):
    sr = rng.random((30, 26, 9)).astype(np.float32)
    lr = rng.random((15, 11, 9)).astype(np.float32)
    whole = dc.project(sr, lr, "kspace")
    monkeypatch.setattr(dc, "_BLOCK_ELEMENTS", 100)
    np.testing.assert_allclose(dc.project(sr, lr, "kspace"), whole, atol=1e-5)
    inplace = sr.copy()
    assert dc.project(inplace, lr, "kspace", out=inplace) is inplace
    np.testing.assert_allclose(inplace, whole, atol=1e-5)
    t = dc.project(torch.from_numpy(sr), torch.from_numpy(lr), "kspace")
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), whole, atol=1e-5)
    # No free axis: every step is blocked on its own.
    sr3, lr3 = rng.random((20, 18, 15)), rng.random((10, 9, 3)) + 1
    ref = None
    for size in (2 ** 20, 50):
        monkeypatch.setattr(dc, "_BLOCK_ELEMENTS", size)
        got = dc.project(sr3, lr3, "auto")
        ref = got if ref is None else ref
        np.testing.assert_allclose(got, ref, atol=1e-10)


def test_thick_slice_uses_the_shared_weights(rng):
    x = rng.random((5, 31))
    for profile in ("box", "gaussian"):
        w = slice_profile_weights(31, 31 / 7, profile, 1.3)
        np.testing.assert_allclose(thick_slice(x, 31 / 7, 1, profile, 1.3), x @ w.T, atol=1e-12)
        np.testing.assert_allclose(w.sum(axis=1), 1.0)


shipped = pytest.mark.skipif(not weights_path("liif_s").exists(),
                             reason="shipped weights not built yet")


@shipped
def test_upscale_projects_the_whole_output_and_records_it(tmp_path):
    ph = make_brain_phantom(shape=(40, 40, 6), voxel_size=(2, 2, 4), seed=4)
    lr, lr_aff = degrade_volume(ph.t2w, ph.affine, (2, 2, 1), kind="kspace")
    vol = Volume(lr, lr_aff)
    plain = up.upscale(vol, scale=(2, 2, 1), model="liif_s", device="cpu", consistency="none")
    proj = up.upscale(vol, scale=(2, 2, 1), model="liif_s", device="cpu", consistency="auto")
    assert proj.data.shape == plain.data.shape == ph.t2w.shape
    np.testing.assert_allclose(proj.affine, plain.affine)
    info = proj.info["consistency"]
    assert info["requested"] == "auto" and info["model"] == "kspace"
    # Magnitudes: consistent only approximately (the real part, clipped at 0).
    assert info["kspace_axes"] == [0, 1] and info["mismatch_after"] < 0.7 * info["mismatch_before"]
    np.testing.assert_allclose(proj.data, dc.project(plain.data, lr, "kspace"), atol=1e-4)
    assert plain.info["consistency"]["model"] == "none"
    # A cubic remainder along the slice axis: the projection covers the whole output volume.
    rem = up.upscale(vol, scale=(2, 2, 1.5), model="liif_s", device="cpu", consistency="kspace")
    assert rem.data.shape == (40, 40, 9)
    assert rem.info["consistency"]["kspace_axes"] == [0, 1, 2]
    assert dc.consistency_mismatch(rem.data, lr, "kspace") < \
        0.7 * rem.info["consistency"]["mismatch_before"]
    # Thick slices: auto picks the box profile; the sidecar and the CLI carry the choice.
    thick, thick_aff = degrade_volume(ph.t2w[:, :, :6], ph.affine, (1, 1, 3), kind="thick_slice")
    save_nifti(thick, thick_aff, tmp_path / "thick.nii.gz")
    up.upscale_file(tmp_path / "thick.nii.gz", tmp_path / "sr.nii.gz", scale=(1, 1, 3),
                    model="liif_s", device="cpu", memmap=True)
    info = json.loads((tmp_path / "sr.json").read_text())["consistency"]
    assert info["model"] == "slice_box" and info["slice_axis"] == 2
    assert main(["upscale", str(tmp_path / "thick.nii.gz"), "--scale", "1,1,3", "-o",
                 str(tmp_path / "none.nii.gz"), "--model", "liif_s", "--consistency", "none",
                 "--device", "cpu", "-q"]) == 0
    info = json.loads((tmp_path / "none.json").read_text())["consistency"]
    assert info == {"requested": "none", "model": "none", "kspace_axes": [], "slice_axis": None,
                    "slice_profile": None, "seconds": info["seconds"]}
    with pytest.raises(InputError, match="unknown consistency model"):
        up.upscale(vol, scale=2, model="liif_s", device="cpu", consistency="sinc")
