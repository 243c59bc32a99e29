import csv

import numpy as np
import pytest

from mrisr.config import from_dict
from mrisr.data.phantom import make_brain_phantom
from mrisr.degradation import degrade, spline_resize
from mrisr.errors import ConfigError
from mrisr.evaluation import EvaluateConfig, SRCase, SRMethod, evaluate, register_method
from mrisr.evaluation.harness import select_slices
from mrisr.evaluation.methods import interpolate, make_method
from mrisr.evaluation.report import markdown_tables, write_report


def small_config(**extra):
    base = {"dataset": {"kind": "phantom", "shape": [64, 64, 24], "voxel_size": [2, 2, 4]},
            "max_slices": 3, "scales": [2, 4, 6]}
    base.update(extra)
    return from_dict(EvaluateConfig, base)


def test_interpolation_baselines_order_on_kspace_data():
    result = evaluate(small_config(), show_progress=False)
    by = {}
    for row in result.rows:
        by.setdefault((row["method"], row["scale"]), []).append(row["psnr"])
    mean = {k: np.mean(v) for k, v in by.items()}
    for s in ("2", "4", "6"):
        # Zero-filled k-space is the exact inverse model of k-space cropping.
        assert mean[("kspace_zerofill", s)] > mean[("cubic", s)] > mean[("nearest", s)]
        assert mean[("linear", s)] > mean[("nearest", s)]
    assert mean[("cubic", "2")] > mean[("cubic", "4")] > mean[("cubic", "6")]
    # Reference-free methods are evaluated once per case, not once per reference type.
    assert {r["reference"] for r in result.rows} == {"-"}
    assert len(result.rows) == 3 * 3 * 4


def test_zero_filling_the_magnitude_loses_the_signed_ringing():
    """A k-space-cropped input is complex with signed ringing; its magnitude (what a NIfTI file
    holds, and what the models read) zero-filled is a weaker baseline, equal where there is no
    ringing to lose."""
    cfg = small_config(methods=[{"name": "kspace_zerofill"},
                                {"name": "kspace_zerofill_magnitude"}], scales=[2, 4])
    rows = evaluate(cfg, show_progress=False).rows
    psnr = {(r["method"], r["scale"], r["index"]): r["psnr"] for r in rows}
    for (method, scale, k), value in psnr.items():
        if method == "kspace_zerofill":
            assert value > psnr[("kspace_zerofill_magnitude", scale, k)]
    flat = SRCase(lr=np.full((8, 8), 2.0 + 0j, np.complex64), out_shape=(16, 16))
    np.testing.assert_allclose(make_method("kspace_zerofill_magnitude")(flat),
                               make_method("kspace_zerofill")(flat), atol=1e-5)


def test_evaluation_is_deterministic_and_reports_are_written(tmp_path):
    cfg = small_config()
    a, b = evaluate(cfg, show_progress=False), evaluate(cfg, show_progress=False)
    assert [r["psnr"] for r in a.rows] == [r["psnr"] for r in b.rows]
    paths = write_report(a, tmp_path)
    for key in ("cases", "table", "figure", "psnr_vs_scale", "summary", "config"):
        assert paths[key].exists() and paths[key].stat().st_size > 0, key
    rows = list(csv.DictReader(paths["cases"].open()))
    assert len(rows) == len(a.rows) and {"psnr", "ssim", "ssim_range2", "nrmse"} <= set(rows[0])
    table = paths["table"].read_text()
    assert "| kspace_zerofill |" in table and "x6 (OOD)" in table and "Avg SSIM" in table


class EchoReference(SRMethod):
    """Returns the reference resampled to the output grid: exposes how references are built."""

    uses_reference = True

    def __call__(self, case: SRCase):
        assert case.reference is not None
        seen.append((case.reference.shape, case.reference_scale, case.target_scale))
        return np.abs(interpolate(case.reference, case.out_shape, "sinc")).astype(np.float32)


seen = []
register_method("echo_reference")(EchoReference)


def test_reference_types_hr_lr_and_own_scale():
    seen.clear()
    cfg = small_config(methods=[{"name": "echo_reference"}], references=["hr", "lr", "3"],
                       scales=[2], max_slices=1)
    result = evaluate(cfg, show_progress=False)
    assert [r["reference"] for r in result.rows] == ["hr", "lr", "3"]
    shapes = [s[0] for s in seen]
    assert shapes == [(64, 64), (32, 32), (21, 21)]
    assert seen[0][1] == (1.0, 1.0) and seen[1][1] == (2.0, 2.0)
    assert seen[2][1] == pytest.approx((64 / 21, 64 / 21))
    assert seen[0][2] == (2.0, 2.0)
    table = markdown_tables(result)
    assert "HR reference" in table and "own scale x3" in table


def test_volume_mode_and_masked_protocol():
    cfg = small_config(mode="volume", scales=[2], protocol="brainmask", use_mask=True,
                       degradation="bicubic", methods=[{"name": "cubic"}])
    result = evaluate(cfg, show_progress=False)
    assert len(result.rows) == 1 and result.rows[0]["index"] == -1
    # The same score by hand: one 3D case (every axis halved), cubic interpolation back,
    # negative values clipped, squared error averaged over the brain mask only, and the peak
    # taken as max - min of the target inside the mask.
    ph = make_brain_phantom(shape=(64, 64, 24), voxel_size=(2, 2, 4), seed=0)
    hr, mask = ph.t2w.astype(np.float64), ph.brain_mask
    lr = degrade(ph.t2w, 2, kind="bicubic")
    assert lr.shape == (32, 32, 12)
    pred = np.clip(spline_resize(lr, hr.shape, order=3), 0, None)
    mse = np.mean((pred[mask] - hr[mask]) ** 2)
    peak = hr[mask].max() - hr[mask].min()
    assert result.rows[0]["psnr"] == pytest.approx(10 * np.log10(peak ** 2 / mse), abs=1e-3)
    # Scoring the whole volume instead (background included) would give another number.
    whole = np.mean((pred - hr) ** 2)
    assert abs(10 * np.log10(peak ** 2 / whole) - result.rows[0]["psnr"]) > 1.0


def test_select_slices_respects_brain_fraction():
    mask = np.zeros((10, 10, 6), bool)
    mask[:, :, 2:4] = True
    mask[:2, :2, 5] = True
    img = mask.astype(np.float32)
    assert select_slices(img, mask, 2, 0.1) == [2, 3]
    assert select_slices(img, mask, 2, 0.01) == [2, 3, 5]


def test_unknown_method_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown method 'bicubik'"):
        make_method("bicubik")


def test_outputs_are_projected_to_magnitudes():
    from mrisr.data.intensity import to_magnitude
    real = np.array([-0.2, 0.0, 0.5])
    np.testing.assert_array_equal(to_magnitude(real), [0.0, 0.0, 0.5])
    np.testing.assert_allclose(to_magnitude(np.array([3 + 4j, -1j])), [5.0, 1.0])
