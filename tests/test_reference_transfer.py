"""Detail from the reference by a local linear fit (mrisr.inference.reference_transfer)."""
import json

import numpy as np
import pytest

from mrisr.data.intensity import to_magnitude
from mrisr.degradation.kspace import kspace_resize
from mrisr.errors import InputError
from mrisr.inference.decisions import (decide_reference_transfer, reference_transfer_outcome,
                                       reference_transfer_weight)
from mrisr.inference.reference_transfer import (THICK_SLICE_WEIGHT, auto_weight,
                                                local_linear_fit, transfer_reference_detail)


def _zero_filled(volume, in_plane_shape):
    """Each slice along axis 2 resized in k-space to ``in_plane_shape`` (magnitude)."""
    return np.stack([to_magnitude(kspace_resize(volume[..., k], in_plane_shape))
                     for k in range(volume.shape[2])], axis=2).astype(np.float32)


def _rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


@pytest.fixture
def anatomy():
    """A reference with structure at every scale (blobs, edges, fine stripes), 96x96x3."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[-1:1:96j, -1:1:96j]
    slices = []
    for k in range(3):
        head = (xx ** 2 + yy ** 2 < 0.7).astype(np.float32)
        ventricles = ((xx / 0.25) ** 2 + ((yy - 0.1 * k) / 0.4) ** 2 < 1).astype(np.float32)
        stripes = 0.3 * (np.sin(40 * xx + 25 * yy + k) > 0)
        blobs = sum(np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.005)
                    for cx, cy in rng.uniform(-0.6, 0.6, (12, 2)))
        slices.append(head * (1.0 + stripes + 0.5 * blobs - 0.6 * ventricles))
    return np.stack(slices, axis=2).astype(np.float32)


def test_local_fit_finds_a_line_and_its_determination():
    rng = np.random.default_rng(0)
    guide = rng.random((40, 40))
    slope, determination = local_linear_fit(3.0 * guide + 2.0, guide, (5, 5), 1e-9)
    assert np.allclose(slope, 3.0, atol=1e-4)
    assert np.all(determination > 0.999)
    noise = rng.random((40, 40))
    _, unrelated = local_linear_fit(noise, guide, (9, 9), 1e-9)
    assert unrelated.mean() < 0.2


def test_a_linearly_related_reference_restores_the_detail_and_keeps_the_input(anatomy):
    """target = 2 ref + 0.5 inside the head: the zero-filled x4 input moved all the way gets
    most of the truth back and still gives the input back under the k-space crop."""
    truth = 2.0 * anatomy + 0.5 * (anatomy > 0)
    lr = _zero_filled(truth, (24, 24))
    output = _zero_filled(lr, (96, 96))
    before = _rmse(output, truth)
    entry = transfer_reference_detail(output, lr, anatomy, 2, weight=1.0)
    assert entry["weight"] == 1.0 and entry["window"] == [9, 9]
    assert entry["mean_confidence"] > 0.5
    assert _rmse(output, truth) < 0.5 * before
    assert _rmse(_zero_filled(output, (24, 24)), lr) < 0.05 * _rmse(lr, 0 * lr)


def test_an_unrelated_reference_changes_little(anatomy):
    """A reference of noise: the fit does not hold, so the output stays near the model's."""
    rng = np.random.default_rng(1)
    truth = anatomy
    lr = _zero_filled(truth, (48, 48))
    model_output = _zero_filled(lr, (96, 96))
    output = model_output.copy()
    noise = rng.random(anatomy.shape).astype(np.float32)
    entry = transfer_reference_detail(output, lr, noise, 2)
    assert entry["weight"] == auto_weight(2) == 0.4
    assert entry["mean_confidence"] < 0.2
    assert _rmse(output, truth) < 1.05 * _rmse(model_output, truth)


def test_a_reference_on_its_own_grid_is_resized_in_plane(anatomy):
    """The reference at twice the output's in-plane resolution gives what the reference on
    the output grid gives."""
    truth = 2.0 * anatomy
    lr = _zero_filled(truth, (24, 24))
    fine = _zero_filled(anatomy, (192, 192))
    on_grid, on_own = (_zero_filled(lr, (96, 96)) for _ in range(2))
    transfer_reference_detail(on_grid, lr, _zero_filled(fine, (96, 96)), 2, weight=1.0)
    transfer_reference_detail(on_own, lr, fine, 2, weight=1.0)
    assert _rmse(on_grid, on_own) < 1e-3 * float(truth.max())


def test_nothing_is_done_when_the_slice_axis_is_upscaled_or_the_weight_is_zero(anatomy):
    lr = _zero_filled(anatomy, (48, 48))
    data = np.zeros((96, 96, 6), np.float32)
    assert "reason" in transfer_reference_detail(data, lr, anatomy, 2)
    data = _zero_filled(lr, (96, 96))
    kept = data.copy()
    assert transfer_reference_detail(data, lr, anatomy, 2, weight=0.0) == {"reason": "weight 0"}
    assert np.array_equal(data, kept)


def test_a_reference_no_finer_than_the_input_changes_nothing(anatomy):
    lr = _zero_filled(2.0 * anatomy, (48, 48))
    data = _zero_filled(lr, (96, 96))
    kept = data.copy()
    entry = transfer_reference_detail(data, lr, _zero_filled(anatomy, (40, 40)), 2)
    assert "no finer than the input" in entry["reason"] and np.array_equal(data, kept)


def test_only_the_band_the_reference_holds_moves(anatomy):
    """A reference at 48 pixels for a 24 -> 96 job: the output (a model's, with detail in
    every band) changes between the input's band and the reference's, hardly beyond it,
    where the reference predicts nothing."""
    def spectrum(x):
        return np.abs(np.fft.fftshift(np.fft.fft2(x, axes=(0, 1)), axes=(0, 1))) ** 2

    truth = 2.0 * anatomy
    lr = _zero_filled(truth, (24, 24))
    data = truth.copy()
    transfer_reference_detail(data, lr, _zero_filled(anatomy, (48, 48)), 2, weight=1.0)
    inside = np.zeros((96, 96), bool)
    inside[24:72, 24:72] = True
    change, detail = spectrum(data - truth), spectrum(truth)
    assert change[inside].sum() > 0
    assert change[~inside].sum() < 0.01 * detail[~inside].sum()


def test_auto_weight_grows_with_the_factor():
    assert [auto_weight(f) for f in (1.0, 2.0, 4.0, 8.0, 16.0)] == [0.2, 0.4, 0.6, 0.8, 0.8]
    assert 0.4 < auto_weight(3.0) < 0.6


def test_auto_weight_is_fixed_for_thick_slices():
    assert {auto_weight(f, "slice_box") for f in (2.0, 3.0, 5.0, 8.0)} == {THICK_SLICE_WEIGHT}
    assert THICK_SLICE_WEIGHT < auto_weight(3.0)


@pytest.mark.parametrize("requested, with_reference, model, choice", [
    ("auto", True, "kspace", "0.4"),
    ("on", True, "kspace", "1"),
    ("0.3", True, "kspace", "0.3"),
    ("off", True, "kspace", "none"),
    ("auto", False, "kspace", "none"),
    ("auto", True, "slice_box", "0.3"),
    ("auto", True, "slice_gaussian", "none"),
    ("on", True, "none", "none"),
])
def test_decision(requested, with_reference, model, choice):
    decision = decide_reference_transfer(requested, with_reference, model, 2.0)
    assert decision.choice == choice
    if choice == "none" and requested != "off":
        assert "needs" in decision.reason or "no reference" in decision.reason


def test_weight_errors_name_the_option():
    with pytest.raises(InputError, match="reference_transfer must be"):
        reference_transfer_weight("1.5")
    asked = decide_reference_transfer("auto", True, "kspace", 4.0)
    assert asked.choice == "0.6"
    assert reference_transfer_outcome(asked, {"reason": "weight 0"}).choice == "none"
    done = reference_transfer_outcome(asked, {"weight": 0.6, "window": [5, 5]})
    assert done.choice == asked.choice and done.evidence["window"] == [5, 5]


def test_upscale_records_the_transfer_and_off_leaves_the_model_output(tmp_path):
    """mrisr upscale with --ref: the decision and its evidence in the sidecar; --reference-
    transfer off gives the output without it; a bad weight is a one-line error."""
    from mrisr.cli.main import main
    from mrisr.data.phantom import make_brain_phantom
    from mrisr.io.nifti import load_nifti, save_nifti

    ph = make_brain_phantom(shape=(96, 96, 3), voxel_size=(1, 1, 4))
    hr, scan, ref = (tmp_path / f"{n}.nii.gz" for n in ("t2_hr", "t2", "t1"))
    save_nifti(ph.t2w, ph.affine, hr)
    save_nifti(ph.t1w, ph.affine, ref)
    assert main(["degrade", str(hr), "--scale", "2,2,1", "-o", str(scan)]) == 0
    args = ["upscale", str(scan), "--ref", str(ref), "--scale", "2,2,1", "-q", "--no-register"]
    assert main([*args, "-o", str(tmp_path / "auto.nii.gz")]) == 0
    assert main([*args, "-o", str(tmp_path / "off.nii.gz"), "--reference-transfer", "off"]) == 0
    auto = json.loads((tmp_path / "auto.json").read_text())
    off = json.loads((tmp_path / "off.json").read_text())
    decision = auto["decisions"]["reference_transfer"]
    assert decision["choice"] == "0.4"
    assert decision["evidence"]["window"] == [5, 5]
    assert 0.0 < decision["evidence"]["mean_confidence"] <= 1.0
    assert auto["reference_transfer"]["weight"] == 0.4
    assert off["decisions"]["reference_transfer"]["choice"] == "none"
    assert "reference_transfer" not in off
    a = load_nifti(tmp_path / "auto.nii.gz").data
    b = load_nifti(tmp_path / "off.nii.gz").data
    assert a.shape == b.shape == (96, 96, 3) and not np.allclose(a, b)
    truth = ph.t2w.astype(np.float32)
    assert _rmse(a, truth) < _rmse(b, truth)
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "-o", str(tmp_path / "bad.nii.gz"), "--reference-transfer", "2"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "bad.nii.gz").exists()


def test_thick_slices_get_the_reference_detail_and_keep_the_input(anatomy):
    """A box-profile thick-slice job (axis 1 four times thicker; slices along axis 2):
    target = 2 ref + 0.5, the spread input moved all the way gets most of the truth back and
    still averages to the input's slices."""
    from mrisr.degradation.image import thick_slice

    truth = 2.0 * anatomy + 0.5 * (anatomy > 0)
    lr = thick_slice(truth, 4, axis=1).astype(np.float32)
    assert lr.shape == (96, 24, 3)
    output = np.repeat(lr, 4, axis=1)
    before = _rmse(output, truth)
    entry = transfer_reference_detail(output, lr, anatomy, 2, weight=1.0,
                                      consistency="slice_box")
    assert entry["window"] == [3, 9]
    assert _rmse(output, truth) < 0.5 * before
    assert _rmse(thick_slice(output, 4, axis=1), lr) < 1e-3 * float(lr.max())
    skipped = transfer_reference_detail(output, lr, anatomy, 2, consistency="slice_gaussian")
    assert "not 'slice_gaussian'" in skipped["reason"]
