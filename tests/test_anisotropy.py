"""The tensor-consistency step: a model's detail on a diffusion series loses the part that a
tensor fit reads as anisotropy (mrisr.inference.anisotropy), and ``mrisr upscale`` applies it
to series with their b-tables."""
import json

import numpy as np
import pytest
import torch

import mrisr.inference.anisotropy as anisotropy
from mrisr.cli.main import main
from mrisr.data.dwi import shells
from mrisr.data.phantom import make_dwi_phantom
from mrisr.data.tensor_design import anisotropic_projection
from mrisr.degradation import degrade_volume, spline_resize
from mrisr.errors import InputError
from mrisr.inference import upscale as up
from mrisr.inference.anisotropy import remove_anisotropic_detail, usable_shells
from mrisr.inference.decisions import decide_tensor_consistency, tensor_consistency_weight
from mrisr.io import save_nifti, write_bvals, write_bvecs
from mrisr.models import create_model, save_checkpoint
from mrisr.models.registry import weights_path

from test_dmri import TINY_3D

shipped = pytest.mark.skipif(not weights_path("liif_s").exists(),
                             reason="shipped weights absent")


def directions(n: int, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed).normal(size=(3, n))
    return g / np.linalg.norm(g, axis=0)


def fitted_deviator(signal: np.ndarray, s0: np.ndarray, bvals: np.ndarray,
                    bvecs: np.ndarray) -> np.ndarray:
    """Traceless part ``(V, 3, 3)`` of the log-linear tensor fit of ``signal`` ``(N, V)`` (one
    shell) over ``s0`` ``(V,)``: the anisotropy (FA and directions) apart from the MD."""
    x, y, z = bvecs
    design = -bvals[:, None] * np.stack([x * x, y * y, z * z, 2 * x * y, 2 * x * z,
                                         2 * y * z], 1)
    dxx, dyy, dzz, dxy, dxz, dyz = np.linalg.lstsq(design, np.log(signal / s0), rcond=None)[0]
    tensors = np.stack([np.stack([dxx, dxy, dxz], -1), np.stack([dxy, dyy, dyz], -1),
                        np.stack([dxz, dyz, dzz], -1)], -2)
    return tensors - np.trace(tensors, axis1=1, axis2=2)[:, None, None] * np.eye(3) / 3


def tensor_signal(s0, tensors, bvals, bvecs):
    """``(N, V)`` signal of ``V`` voxels with tensors ``(V, 3, 3)`` (mm^2/s)."""
    quad = np.einsum("in,vij,jn->nv", bvecs, tensors, bvecs)
    return s0[None] * np.exp(-bvals[:, None] * quad)


def test_shells_split_at_gaps_and_leave_out_b0():
    bvals = np.array([0, 995, 1005, 5, 2010, 1000, 1990, 3000, 2000])
    assert [s.tolist() for s in shells(bvals)] == [[1, 2, 5], [4, 6, 8], [7]]
    assert shells(np.zeros(3)) == []


def test_usable_shells_need_seven_directions_with_a_vector():
    bvals = np.array([0] + [1000] * 8 + [2000] * 6, dtype=float)
    bvecs = np.concatenate([np.zeros((3, 1)), directions(14)], axis=1)
    bvecs[:, 3] = 0  # a b=1000 volume without a direction
    used, described = usable_shells(bvals, bvecs)
    assert [u.tolist() for u in used] == [[1, 2, 4, 5, 6, 7, 8]]
    assert described == [{"bvalue": 1000.0, "volumes": 7, "used": True},
                         {"bvalue": 2000.0, "volumes": 6, "used": False}]


def test_isotropic_detail_is_kept_and_weight_zero_changes_nothing():
    rng = np.random.default_rng(1)
    n, bvals, bvecs = 12, np.full(12, 1000.0), directions(12)
    base = rng.uniform(0.5, 1.0, size=(n, 4, 5, 3)).astype(np.float32)
    sharpening = rng.uniform(-0.2, 0.2, size=(4, 5, 3)).astype(np.float32)
    out = base * (1 + sharpening)  # the same relative detail in every direction
    before = out.copy()
    remove_anisotropic_detail(out, base, bvals, bvecs, 1.0)
    np.testing.assert_allclose(out, before, rtol=1e-5, atol=1e-6)
    out = base + rng.normal(0, 0.05, size=base.shape).astype(np.float32)
    before = out.copy()
    report = remove_anisotropic_detail(out, base, bvals, bvecs, 0.0)
    np.testing.assert_array_equal(out, before)
    assert report["shells"][0]["detail_removed"] == 0.0


def test_full_weight_keeps_the_fitted_anisotropy_of_the_base():
    """Base and model output from different tensors: with w = 1 the anisotropic (traceless)
    part of the fitted tensor is the base's (to first order in the relative detail), with
    w = 0.5 halfway, and the mean log-signal over the shell (S_0 and MD) stays the output's."""
    rng = np.random.default_rng(2)
    n, v = 20, 50
    bvals, bvecs = np.full(n, 1000.0), directions(n, 3)
    eig = np.diag([1.5e-3, 0.5e-3, 0.4e-3])
    rotations = np.linalg.qr(rng.normal(size=(v, 3, 3)))[0]
    base_tensors = rotations @ eig @ rotations.transpose(0, 2, 1)
    bump = rng.normal(0, 0.03e-3, size=(v, 3, 3))
    out_tensors = base_tensors + (bump + bump.transpose(0, 2, 1)) / 2
    s0 = rng.uniform(500, 1000, size=v)
    base = tensor_signal(s0, base_tensors, bvals, bvecs).astype(np.float32)
    out = tensor_signal(s0, out_tensors, bvals, bvecs).astype(np.float32)

    def deviation(signal):
        return np.abs(fitted_deviator(signal, s0, bvals, bvecs) -
                      fitted_deviator(base, s0, bvals, bvecs)).mean()

    half = out.copy().reshape(n, v, 1, 1)
    remove_anisotropic_detail(half, base.reshape(n, v, 1, 1), bvals, bvecs, 0.5)
    full = out.copy().reshape(n, v, 1, 1)
    report = remove_anisotropic_detail(full, base.reshape(n, v, 1, 1), bvals, bvecs, 1.0)
    assert deviation(full.reshape(n, v)) < 0.05 * deviation(out)
    assert deviation(half.reshape(n, v)) == pytest.approx(0.5 * deviation(out), rel=0.1)
    np.testing.assert_allclose(np.log(full.reshape(n, v)).mean(0), np.log(out).mean(0),
                               atol=2e-3)
    assert 0.5 < report["shells"][0]["detail_removed"] <= 1.0


def test_slabs_give_the_same_result_as_one_pass(monkeypatch):
    rng = np.random.default_rng(4)
    n = 9
    bvals = np.array([0] + [1000] * 8, dtype=float)
    bvecs = np.concatenate([np.zeros((3, 1)), directions(8)], axis=1)
    base = rng.uniform(0.2, 1.0, size=(n, 7, 6, 5)).astype(np.float32)
    out = base + rng.normal(0, 0.05, size=base.shape).astype(np.float32)
    whole = out.copy()
    remove_anisotropic_detail(whole, base, bvals, bvecs, 0.7)
    monkeypatch.setattr(anisotropy, "_SLAB_BYTES", 1)  # one row of voxels at a time
    slabs = out.copy()
    remove_anisotropic_detail(slabs, base, bvals, bvecs, 0.7)
    np.testing.assert_allclose(slabs, whole, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(slabs[0], out[0])  # the b=0 volume is never touched
    # What was taken out is the weighted projection of the relative detail.
    projection = anisotropic_projection(torch.from_numpy(bvecs[:, 1:].T[None].copy()),
                                        torch.from_numpy(bvals[None, 1:].copy()))[0].numpy()
    relative = (out[1:] - base[1:]) / base[1:]
    expected = out[1:] - 0.7 * base[1:] * np.tensordot(projection, relative, axes=(1, 0))
    np.testing.assert_allclose(whole[1:], np.maximum(expected, 0), rtol=1e-4, atol=1e-5)


def test_weights_and_decisions():
    assert tensor_consistency_weight("auto") is None
    assert tensor_consistency_weight("off") == 0.0 and tensor_consistency_weight(True) == 1.0
    assert tensor_consistency_weight("0.25") == 0.25
    for bad in ("1.5", "-0.1", "half", float("nan")):
        with pytest.raises(InputError, match="tensor_consistency"):
            tensor_consistency_weight(bad)
    good = [{"bvalue": 1000.0, "volumes": 30, "used": True}]
    small = [{"bvalue": 1000.0, "volumes": 6, "used": False}]
    assert decide_tensor_consistency("auto", True, True, True, good).choice == "0.5"
    assert decide_tensor_consistency("0.8", True, True, True, good).choice == "0.8"
    assert decide_tensor_consistency("off", True, True, True, good).choice == "none"
    for args, why in (((True, False, False, []), "not a 4D series"),
                      ((False, True, True, good), "interpolation"),
                      ((True, True, False, []), "no .bval/.bvec"),
                      ((True, True, True, small), "enough directions")):
        decision = decide_tensor_consistency("auto", *args)
        assert decision.choice == "none" and why in decision.reason


@pytest.fixture(scope="module")
def series8(tmp_path_factory):
    """An LR series (b=0 + 8 directions, x2 in-plane) with its b-tables, and one without."""
    root = tmp_path_factory.mktemp("dwi8")
    ph = make_dwi_phantom(shape=(24, 28, 10), voxel_size=(2.5, 2.5, 2.5), n_directions=8)
    lr, lr_affine = degrade_volume(ph.dwi * 1000.0, ph.affine, (2, 2, 1), kind="bicubic")
    save_nifti(lr, lr_affine, root / "dwi.nii.gz")
    write_bvals(root / "dwi.bval", ph.bvals)
    write_bvecs(root / "dwi.bvec", ph.bvecs)
    save_nifti(lr, lr_affine, root / "nobval.nii.gz")
    torch.manual_seed(0)
    model = create_model("csr_dmri", **TINY_3D, use_t1=False).eval()
    save_checkpoint(root / "tiny.pt", model)
    return {"root": root, "lr": lr, "phantom": ph, "model": root / "tiny.pt"}


def anisotropic_size(series: np.ndarray, lr: np.ndarray, bvals, bvecs) -> float:
    """RMS of the anisotropic part of the detail of ``series`` over cubic, in signal units."""
    k = bvals > 50
    cubic = np.stack([np.clip(spline_resize(lr[..., v], series.shape[:3]), 0, None)
                      for v in np.flatnonzero(k)])
    detail = np.moveaxis(series[..., k], -1, 0) - cubic
    relative = np.clip(detail / np.maximum(cubic, 1e-6 * cubic.max()), -1, 1)
    projection = anisotropic_projection(torch.from_numpy(bvecs[:, k].T[None].copy()),
                                        torch.from_numpy(bvals[None, k].copy()))[0].numpy()
    part = cubic * np.tensordot(projection, relative, axes=(1, 0))
    return float(np.sqrt(np.mean(part ** 2)))


def test_3d_model_series_gets_the_step_by_default(series8, tmp_path):
    f, ph = series8, series8["phantom"]
    units = {"total": 0, "done": 0}

    def on_start(n):
        units["total"] += n

    def progress(n):
        units["done"] += n

    kwargs = dict(scale=(2, 2, 1), model=str(f["model"]), device="cpu")
    auto = up.upscale_file(f["root"] / "dwi.nii.gz", tmp_path / "auto.nii.gz",
                           on_start=on_start, progress=progress, **kwargs)
    assert units["done"] == units["total"] > 0
    off = up.upscale_file(f["root"] / "dwi.nii.gz", tmp_path / "off.nii.gz",
                          tensor_consistency="off", **kwargs)
    auto, off = np.asarray(auto.dataobj), np.asarray(off.dataobj)
    np.testing.assert_array_equal(auto[..., 0], off[..., 0])  # b=0
    before = anisotropic_size(off, f["lr"], ph.bvals, ph.bvecs)
    after = anisotropic_size(auto, f["lr"], ph.bvals, ph.bvecs)
    assert before > 0 and after == pytest.approx(0.5 * before, rel=0.1)
    decision = json.loads((tmp_path / "auto.json").read_text())["decisions"]["tensor_consistency"]
    assert decision["choice"] == "0.5" and decision["evidence"]["weight"] == 0.5
    shell = decision["evidence"]["shells"][0]
    assert shell["volumes"] == 8 and shell["used"] and 0 < shell["detail_removed"] < 1
    off_decision = json.loads((tmp_path / "off.json").read_text())["decisions"]
    assert off_decision["tensor_consistency"]["choice"] == "none"


def test_explicit_weight_needs_the_b_tables(series8, tmp_path, capsys):
    f = series8
    with pytest.raises(InputError, match="nobval.nii.gz: tensor consistency needs"):
        up.upscale_file(f["root"] / "nobval.nii.gz", tmp_path / "sr.nii.gz", scale=(2, 2, 1),
                        model=str(f["model"]), device="cpu", tensor_consistency=1)
    assert not any(tmp_path.iterdir())
    # auto says why it did nothing; an interpolation has no detail to change.
    up.upscale_file(f["root"] / "nobval.nii.gz", tmp_path / "a.nii.gz", scale=(2, 2, 1),
                    model=str(f["model"]), device="cpu")
    up.upscale_file(f["root"] / "dwi.nii.gz", tmp_path / "c.nii.gz", scale=(2, 2, 1),
                    model="cubic", tensor_consistency=1)
    for name, why in (("a", "no .bval/.bvec"), ("c", "interpolation")):
        entry = json.loads((tmp_path / f"{name}.json").read_text())["decisions"]
        assert why in entry["tensor_consistency"]["reason"]
    with pytest.raises(SystemExit) as exit_info:
        main(["upscale", str(f["root"] / "dwi.nii.gz"), "--scale", "2,2,1", "-o",
              str(tmp_path / "x.nii.gz"), "--tensor-consistency", "2", "-q"])
    assert exit_info.value.code == 2
    assert "--tensor-consistency: expected auto, on, off or a weight" in capsys.readouterr().err


@shipped
def test_2d_model_series_with_the_cli_flag(series8, tmp_path):
    f = series8
    out = tmp_path / "sr.nii.gz"
    assert main(["upscale", str(f["root"] / "dwi.nii.gz"), "--scale", "2,2,1", "-o", str(out),
                 "--model", "liif_s", "--tensor-consistency", "1", "--device", "cpu",
                 "-q"]) == 0
    sr = np.asarray(__import__("nibabel").load(str(out)).dataobj)
    ph = f["phantom"]
    assert anisotropic_size(sr, f["lr"], ph.bvals, ph.bvecs) < 0.05 * anisotropic_size(
        np.asarray(up.upscale_file(f["root"] / "dwi.nii.gz", tmp_path / "off.nii.gz",
                                   scale=(2, 2, 1), model="liif_s", device="cpu",
                                   tensor_consistency="off").dataobj),
        f["lr"], ph.bvals, ph.bvecs)
    decision = json.loads((tmp_path / "sr.json").read_text())["decisions"]["tensor_consistency"]
    assert decision["choice"] == "1" and "--tensor-consistency 1" in decision["reason"]


def test_progress_counts_only_the_shells_worked_on(tmp_path):
    ph = make_dwi_phantom(shape=(16, 20, 8), voxel_size=(2.5, 2.5, 2.5), n_directions=10)
    lr, lr_affine = degrade_volume(ph.dwi * 1000.0, ph.affine, (2, 2, 1), kind="bicubic")
    save_nifti(lr, lr_affine, tmp_path / "dwi.nii.gz")
    bvals = np.array([0] + [1000] * 7 + [2000] * 3, dtype=float)
    write_bvals(tmp_path / "dwi.bval", bvals)
    write_bvecs(tmp_path / "dwi.bvec", ph.bvecs)
    torch.manual_seed(0)
    model = create_model("csr_dmri", **TINY_3D, use_t1=False).eval()
    save_checkpoint(tmp_path / "tiny.pt", model)
    units = {"total": 0, "done": 0}
    up.upscale_file(tmp_path / "dwi.nii.gz", tmp_path / "sr.nii.gz", scale=(2, 2, 1),
                    model=str(tmp_path / "tiny.pt"), device="cpu",
                    on_start=lambda n: units.update(total=units["total"] + n),
                    progress=lambda n: units.update(done=units["done"] + n))
    assert units["done"] == units["total"] > 0
    shells = json.loads((tmp_path / "sr.json").read_text())["decisions"][
        "tensor_consistency"]["evidence"]["shells"]
    assert [(s["bvalue"], s["volumes"], s["used"]) for s in shells] == [
        (1000.0, 7, True), (2000.0, 3, False)]
    assert "detail_removed" in shells[0] and "detail_removed" not in shells[1]
