"""The detail gain of mrisr upscale (mrisr.inference.calibration)."""
import numpy as np
import pytest

from mrisr.data.intensity import to_magnitude
from mrisr.degradation.kspace import kspace_resize
from mrisr.inference.calibration import apply_detail_gain, detail_gain


def _zero_filled(image, shape):
    return to_magnitude(kspace_resize(image, tuple(shape))).astype(np.float32)


class ScaledDetail:
    """A stand-in upscaler that adds ``alpha`` times the true detail: it reads the truth from
    the reference (given on the output grid) and returns ``z + alpha (ref - z)``."""

    def __init__(self, alpha):
        self.alpha = alpha

    def upscale(self, target, out_shape, axis, reference=None, out=None, progress=None):
        assert reference.shape == tuple(out_shape)
        inplane = [n for a, n in enumerate(out_shape) if a != axis]
        zf = np.stack([_zero_filled(np.take(target, k, axis=axis), inplane)
                       for k in range(target.shape[axis])], axis=axis)
        return zf + self.alpha * (reference - zf)


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[-1:1:64j, -1:1:64j]
    disc = (xx ** 2 + yy ** 2 < 0.6).astype(np.float32)
    slices = [disc * (1 + 0.3 * np.sin(9 * xx + k)) + 0.05 * rng.random((64, 64))
              for k in range(5)]
    return np.stack(slices, axis=2).astype(np.float32) + 0.1


@pytest.mark.parametrize("alpha", [0.5, 2.0, 4.0])
def test_gain_undoes_a_known_overshoot(volume, alpha):
    info = detail_gain(ScaledDetail(alpha), volume, (128, 128, 5), 2, reference=volume)
    assert info["fitted_gain"] == pytest.approx(1 / alpha, rel=0.2)
    assert info["gain"] == pytest.approx(min(1.0, 1 / alpha), rel=0.2)
    assert info["slices"] == 5 and info["pair_shape"] == [32, 32, 5]


def test_gain_is_zero_for_detail_unrelated_to_the_image(volume):
    class Noise:
        def upscale(self, target, out_shape, axis, reference=None, out=None, progress=None):
            zf = ScaledDetail(0.0).upscale(target, out_shape, axis, reference)
            return zf + np.random.default_rng(1).normal(0, 0.3, zf.shape).astype(np.float32)

    info = detail_gain(Noise(), volume, (128, 128, 5), 2, reference=volume)
    assert info["gain"] < 0.1


@pytest.mark.parametrize("out_shape, reason", [((128, 128, 10), "slice axis"),
                                               ((512, 512, 5), "fewer than")])
def test_no_pair_keeps_the_output(volume, out_shape, reason):
    info = detail_gain(ScaledDetail(2.0), volume, out_shape, 2, reference=volume)
    assert info["gain"] == 1.0 and reason in info["reason"]


def test_apply_gain_blends_towards_zero_filling(volume):
    out = np.random.default_rng(2).random((128, 128, 5)).astype(np.float32) * 2
    zf = ScaledDetail(0.0).upscale(volume, (128, 128, 5), 2, np.zeros((128, 128, 5)))
    kept = out.copy()
    apply_detail_gain(kept, volume, 1.0, 2)
    np.testing.assert_array_equal(kept, out)
    half = out.copy()
    apply_detail_gain(half, volume, 0.5, 2)
    np.testing.assert_allclose(half, np.maximum(0.5 * (out + zf), 0), atol=1e-5)
    none = out.copy()
    apply_detail_gain(none, volume, 0.0, 2)
    np.testing.assert_allclose(none, np.maximum(zf, 0), atol=1e-5)


def test_default_without_reference_records_the_gain_and_blends_the_output(tmp_path):
    import json

    from mrisr.cli.main import main
    from mrisr.data.phantom import make_brain_phantom
    from mrisr.io.nifti import load_nifti, save_nifti

    ph = make_brain_phantom(shape=(96, 96, 4), voxel_size=(2, 2, 4))
    scan = tmp_path / "t2.nii.gz"
    save_nifti(ph.t2w, ph.affine, scan)
    args = ["upscale", str(scan), "--scale", "2,2,1", "--model", "liif_s", "-q"]
    assert main([*args, "-o", str(tmp_path / "plain.nii.gz"), "--no-calibrate"]) == 0
    assert main([*args, "-o", str(tmp_path / "cal.nii.gz")]) == 0  # default: no --ref, on
    info = json.loads((tmp_path / "cal.json").read_text())["detail_gain"]
    assert 0.0 <= info["gain"] <= 1.0 and info["pair_shape"] == [48, 48, 4]
    assert "detail_gain" not in json.loads((tmp_path / "plain.json").read_text())
    plain = load_nifti(tmp_path / "plain.nii.gz").data
    cal = load_nifti(tmp_path / "cal.nii.gz").data
    zf = ScaledDetail(0.0).upscale(ph.t2w, plain.shape, 2, np.zeros(plain.shape))
    expected = np.maximum(zf + info["gain"] * (plain - zf), 0)
    np.testing.assert_allclose(cal, expected, atol=1e-3 * float(plain.max()))


def test_series_gain_undoes_a_known_overshoot_of_a_3d_correction():
    """SeriesUpscaler3D.calibrate: a correction twice the true one gets the gain 1/2."""
    import torch

    from mrisr.degradation import spline_resize
    from mrisr.inference.volume3d import SeriesUpscaler3D
    from mrisr.io.nifti import Volume
    from mrisr.models import create_model

    from test_dmri import TINY_3D

    zz, yy, xx = np.mgrid[-1:1:24j, -1:1:24j, -1:1:24j]
    brain = (xx ** 2 + yy ** 2 + zz ** 2 < 0.7) * (1 + 0.4 * np.sin(7 * xx) * np.cos(5 * yy))
    hr = brain.astype(np.float32) + 0.05
    series = np.stack([hr * c for c in (1.0, 0.6, 0.4)], -1)  # one volume, three levels
    torch.manual_seed(0)
    net = create_model("csr_dmri", **TINY_3D, use_t1=False).eval()
    runner = SeriesUpscaler3D(Volume(series, np.eye(4)), None, (net, {"model": "tiny"}),
                              (48, 48, 48), np.diag([0.5, 0.5, 0.5, 1.0]), device="cpu")
    truth, _ = runner.normalised(0)

    class Overshoot:
        uses_reference = False

        def __call__(self, lr, out_shape, t1=None, out=None, progress=None):
            cubic = spline_resize(lr, out_shape, order=3)
            return cubic + 2.0 * (spline_resize(truth, out_shape, order=3) - cubic)

    runner.upscaler = Overshoot()
    plain = runner.upscale(1).data
    entry = runner.calibrate()
    assert entry["pair_shape"] == [12, 12, 12] and entry["volumes"] == [0, 1, 2]
    assert entry["gain"] == pytest.approx(0.5, rel=0.05)
    assert runner.info["detail_gain"] is entry
    cubic = spline_resize(series[..., 1], (48, 48, 48), order=3)
    inside = runner.mask_hr & (plain > 0)
    expected = cubic + entry["gain"] * (plain - cubic)
    np.testing.assert_allclose(runner.upscale(1).data[inside], expected[inside], atol=1e-4)


@pytest.mark.parametrize("value, without_reference, applies", [
    ("auto", True, True), ("auto", False, False), (None, True, True), ("on", False, True),
    (True, False, True), ("off", True, False), (False, True, False)])
def test_calibrate_modes(value, without_reference, applies):
    from mrisr.inference.decisions import calibrate_applies

    assert calibrate_applies(value, without_reference) is applies


def test_calibrate_mode_errors_name_the_option():
    from mrisr.errors import InputError
    from mrisr.inference.decisions import calibrate_applies

    with pytest.raises(InputError, match="calibrate must be one of auto, on, off"):
        calibrate_applies("sometimes", True)


class FromTruth:
    """A stand-in model without a reference that adds ``alpha`` times the true detail plus
    ``noise`` (standard deviation) of detail unrelated to the image; it is told the truth."""

    uses_reference = False

    def __init__(self, truth, alpha, noise=0.0):
        self.truth, self.alpha, self.noise = truth, alpha, noise

    def upscale(self, target, out_shape, axis, reference=None, out=None, progress=None):
        assert reference is None and self.truth.shape == tuple(out_shape)
        zf = ScaledDetail(0.0).upscale(target, out_shape, axis, self.truth)
        noise = np.random.default_rng(3).normal(0, self.noise, zf.shape).astype(np.float32)
        return zf + self.alpha * (self.truth - zf) + noise


def _reference_truth(reference, n_slices, out_shape):
    """The reference as reference_check scores it: its (here all) slices at the output's
    in-plane shape."""
    return _zero_filled(reference, (*out_shape[:2], n_slices))


def test_reference_check_keeps_detail_a_model_gets_right(volume):
    from mrisr.inference.calibration import reference_check

    truth = _reference_truth(volume, 5, (64, 64, 5))
    info = reference_check(FromTruth(truth, 0.8), volume, (32, 32, 5), (64, 64, 5), 2)
    assert info["error_ratio"] < 1 and info["gain"] == 1.0 and info["slices"] == 5
    assert info["fitted_gain"] == pytest.approx(1.25, rel=0.1)


def test_reference_check_weighs_detail_worse_than_zero_filling(volume):
    from mrisr.inference.calibration import reference_check

    truth = _reference_truth(volume, 5, (64, 64, 5))
    info = reference_check(FromTruth(truth, 0.2, noise=0.2), volume, (32, 32, 5),
                           (64, 64, 5), 2)
    assert info["error_ratio"] > 1 and info["energy_ratio"] > 2 and info["gain"] < 0.3
    assert "smoother at this octave" in info["reason"]


def test_reference_check_keeps_weak_detail_even_when_it_is_wrong(volume):
    """Below twice the reference's detail energy the check keeps the detail: there the fitted
    gain was as likely to cost as to gain on the test sets."""
    from mrisr.inference.calibration import reference_check

    truth = _reference_truth(volume, 5, (64, 64, 5))
    info = reference_check(FromTruth(truth, -0.6), volume, (32, 32, 5), (64, 64, 5), 2)
    assert info["error_ratio"] > 1 and info["energy_ratio"] < 2 and info["gain"] == 1.0


def test_reference_check_keeps_the_detail_when_the_reference_has_none_to_compare():
    from mrisr.inference.calibration import reference_check

    flat = np.full((64, 64, 5), 3.0, np.float32)
    info = reference_check(FromTruth(flat, 1.0, noise=0.2), flat, (32, 32, 5), (64, 64, 5), 2)
    assert info["gain"] == 1.0 and "no detail at this octave" in info["reason"]


def test_reference_check_skips_a_reference_coarser_than_the_output(volume):
    from mrisr.inference.calibration import reference_check

    info = reference_check(FromTruth(volume, 1.0), volume, (32, 32, 5), (96, 96, 5), 2)
    assert info == {"gain": 1.0, "reason": "the reference is coarser than the output in-plane"}


def test_default_with_reference_records_the_reference_check(tmp_path):
    """A 2D job with a reference and a model trained on real pairs alone: the reference check
    in the sidecar's calibration decision, and none with --no-calibrate; the default model,
    trained with synthetic references, runs no check and says why."""
    import json

    from mrisr.cli.main import main
    from mrisr.data.phantom import make_brain_phantom
    from mrisr.inference import selection
    from mrisr.io.nifti import save_nifti

    ph = make_brain_phantom(shape=(128, 128, 4), voxel_size=(1, 1, 4))
    hr, scan, ref = (tmp_path / f"{n}.nii.gz" for n in ("t2_hr", "t2", "t1"))
    save_nifti(ph.t2w, ph.affine, hr)
    save_nifti(ph.t1w, ph.affine, ref)
    assert main(["degrade", str(hr), "--scale", "2,2,1", "-o", str(scan)]) == 0
    args = ["upscale", str(scan), "--ref", str(ref), "--scale", "2,2,1", "-q",
            "--no-register", "--model", "dualarbnet_s"]
    assert main([*args, "-o", str(tmp_path / "out.nii.gz")]) == 0
    decision = json.loads((tmp_path / "out.json").read_text())["decisions"]["calibration"]
    assert decision["choice"] == "gain" and decision["evidence"]["check"] == "reference"
    # The check upscales the reference with the model its threshold was set with, not with
    # whatever is the default without a reference.
    assert decision["evidence"]["model"] == "liif_s" != selection.DEFAULT_MODEL_NO_REF
    assert 0.0 <= decision["evidence"]["gain"] <= 1.0
    assert decision["evidence"]["slices"] == 4
    assert main([*args, "-o", str(tmp_path / "off.nii.gz"), "--no-calibrate"]) == 0
    off = json.loads((tmp_path / "off.json").read_text())["decisions"]["calibration"]
    assert off["choice"] == "none" and "detail_gain" not in json.loads(
        (tmp_path / "off.json").read_text())
    default = [a for a in args if a not in ("--model", "dualarbnet_s")]
    assert main([*default, "-o", str(tmp_path / "default.nii.gz")]) == 0
    sidecar = json.loads((tmp_path / "default.json").read_text())
    assert sidecar["model"] == "dualarbnet_robust" and sidecar["synthetic_references"]
    skipped = sidecar["decisions"]["calibration"]
    assert skipped["choice"] == "none" and "synthetic references" in skipped["reason"]
    assert "detail_gain" not in sidecar


@pytest.mark.parametrize("value, with_reference, applies", [
    ("auto", True, True), (None, True, True), ("auto", False, False), ("on", True, False),
    ("off", True, False)])
def test_reference_check_modes(value, with_reference, applies):
    from mrisr.inference.decisions import reference_check_applies

    assert reference_check_applies(value, with_reference) is applies
    assert not reference_check_applies(value, with_reference, synthetic_references=True)


def test_synthetic_references_are_read_from_the_training_config():
    from mrisr.inference.selection import trained_with_synthetic_references as synthetic

    assert not synthetic({}) and not synthetic({"data": {"synthetic": 0.0}})
    assert synthetic({"data": {"synthetic": 0.3}})
    assert synthetic({"data": {"sources": [{"kind": "brats", "synthetic": 0.0},
                                           {"kind": "images", "files": ["a.nii.gz"]}]}})
    assert not synthetic({"data": {"sources": [{"kind": "brats", "synthetic": 0}]}})
