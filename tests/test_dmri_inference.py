"""3D diffusion SR after training: whole-volume inference (tiled encoding, chunked decoding),
``mrisr upscale`` of 4D DWI series with a 3D model, and the CSR-dMRI evaluation."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from mrisr.cli.main import main
from mrisr.config import from_dict, load_yaml
from mrisr.data.phantom import make_dwi_phantom
from mrisr.data.intensity import robust_max
from mrisr.degradation import degrade_volume, spline_resize
from mrisr.errors import InputError
from mrisr.evaluation.dmri import (DmriEvaluateConfig, evaluate_dmri, scale_category,
                                   write_dmri_report)
from mrisr.inference import upscale as up
from mrisr.inference.volume3d import (SeriesUpscaler3D, VolumeUpscaler, encode_tiled,
                                      encode_volume)
from mrisr.io import save_nifti, write_bvals, write_bvecs
from mrisr.io.nifti import Volume
from mrisr.models import create_model, save_checkpoint
from mrisr.training import load_train_config, train
from mrisr.training.config import TrainConfig

from test_dmri import TINY_3D, dmri_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny(**args):
    torch.manual_seed(0)
    return create_model("csr_dmri", **TINY_3D, **args).eval()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# -- whole-volume inference ------------------------------------------------------------------

@pytest.mark.parametrize("args", [{}, {"t1_mode": "own_resolution"}, {"use_t1": False}])
def test_tiled_encoding_equals_whole_volume_encoding(args):
    model = tiny(**args)
    assert model.encoder.receptive_radius == 5  # 2 + D * C + 1 convolutions of 3x3x3
    lr = torch.rand(1, 1, 22, 19, 17)
    ref = {"lr_channel": torch.rand(1, 1, 22, 19, 17),
           "own_resolution": torch.rand(1, 1, 30, 27, 25), None: None}[model.t1_mode]
    with torch.no_grad():
        whole = model.encode(lr, ref)
        tiled = encode_volume(model, lr, ref, tile=6)
    # 6-voxel tiles cut every axis several times; each window adds the 5-voxel halo.
    assert relative_error(tiled.dwi, whole.dwi) < 1e-5
    if ref is not None and model.t1_mode == "own_resolution":
        assert relative_error(tiled.t1, whole.t1) < 1e-5
    # A halo below the receptive radius lets the windows' zero padding leak into the tiles.
    x = torch.cat([lr, ref], 1) if model.t1_mode == "lr_channel" else lr
    short = encode_tiled(model.encoder, x, tile=6, halo=2)
    assert relative_error(short, whole.dwi) > 1e-3
    # A volume that fits in one window is encoded whole.
    assert torch.equal(encode_tiled(model.encoder, x, tile=40), whole.dwi)


def test_own_resolution_t1w_is_encoded_once_per_series():
    model = tiny(t1_mode="own_resolution")
    calls = []
    model.t1_encoder.register_forward_hook(lambda *a: calls.append(1))
    upscaler = VolumeUpscaler(model, torch.device("cpu"), tile=None)
    rng = np.random.default_rng(0)
    t1 = rng.random((14, 12, 10), dtype=np.float32)
    volumes = [rng.random((7, 6, 5), dtype=np.float32) for _ in range(3)]
    outs = [upscaler(v, t1.shape, t1) for v in volumes]
    assert len(calls) == 1
    other = t1.copy()  # another array: encoded anew
    fresh = VolumeUpscaler(tiny(t1_mode="own_resolution"), torch.device("cpu"), tile=None)
    for v, out in zip(volumes, outs):
        np.testing.assert_allclose(fresh(v, t1.shape, t1.copy()), out, atol=1e-6)
    upscaler(volumes[0], t1.shape, other)
    assert len(calls) == 2


def test_volume_upscaler_decodes_in_chunks_into_a_given_array():
    model = tiny()
    lr, t1 = np.random.default_rng(0).random((2, 9, 8, 7)).astype(np.float32)
    out_shape = (20, 17, 15)
    t1_hr = spline_resize(t1, out_shape)
    done = []
    # fp32: compared with the model run directly in fp32 below
    upscaler = VolumeUpscaler(model, torch.device("cpu"), tile=4, chunk=333, precision="fp32")
    out = np.full(out_shape, np.nan, np.float32)
    result = upscaler(lr, out_shape, t1_hr, out=out, progress=done.append)
    assert result is out and sum(done) == out_shape[0]
    # The model reads the T1w degraded to the LR grid as in training.
    with torch.no_grad():
        ref = torch.from_numpy(spline_resize(t1_hr, lr.shape))[None, None]
        whole = model(torch.from_numpy(lr)[None, None], ref, out_shape)[0, 0].numpy()
    np.testing.assert_allclose(result, whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="needs a T1w"):
        upscaler(lr, out_shape)
    with pytest.raises(InputError, match="is 2D"):
        VolumeUpscaler(create_model("liif", G0=8, D=1, C=2, G=8), torch.device("cpu"))


@pytest.mark.parametrize("name", ["csr_dmri", "arssr"])
def test_level_norm_makes_inference_equivariant_to_the_attenuation_scale(name):
    """A b=2500 volume (attenuations about half of b=1000's) reaches a ``level_norm`` model at
    the level it was trained on; the output is multiplied back."""
    args = {k: v for k, v in TINY_3D.items()}
    if name == "csr_dmri":
        args["use_t1"] = False
    lr = np.random.default_rng(1).random((9, 8, 7)).astype(np.float32)
    out_shape = (17, 16, 13)
    results = {}
    for level_norm in (False, True):
        torch.manual_seed(0)
        model = create_model(name, **args, level_norm=level_norm).eval()
        upscaler = VolumeUpscaler(model, torch.device("cpu"), tile=None)
        results[level_norm] = (upscaler(lr, out_shape), upscaler(0.4 * lr, out_shape))
    full, scaled = results[True]
    np.testing.assert_allclose(scaled, 0.4 * full, rtol=1e-4, atol=1e-6)
    full, scaled = results[False]
    assert np.abs(scaled - 0.4 * full).max() > 1e-3  # a network is not scale-equivariant


# -- mrisr upscale of a 4D series --------------------------------------------------------------

@pytest.fixture(scope="module")
def dwi_files(tmp_path_factory):
    """An LR DWI series (x2 cubic downsampling of the phantom, b=0 + 6 directions) with its
    bval/bvec, the phantom's T1w at the HR grid, and a checkpoint of a (random) tiny model."""
    root = tmp_path_factory.mktemp("dwi")
    ph = make_dwi_phantom(shape=(24, 28, 20), voxel_size=(2.5, 2.5, 2.5), n_directions=6)
    lr, lr_affine = degrade_volume(ph.dwi * 1000.0, ph.affine, 2, kind="bicubic")
    save_nifti(lr, lr_affine, root / "dwi.nii.gz")
    write_bvals(root / "dwi.bval", ph.bvals)
    write_bvecs(root / "dwi.bvec", ph.bvecs)
    save_nifti(lr, lr_affine, root / "nobval.nii.gz")
    save_nifti(ph.t1w, ph.affine, root / "t1.nii.gz")
    model = tiny()
    model.preset = "csr_dmri_s"
    save_checkpoint(root / "tiny.pt", model)
    return {"root": root, "phantom": ph, "lr": lr, "lr_affine": lr_affine,
            "model": root / "tiny.pt"}


def test_4d_series_calibrated_gain_in_the_sidecar(dwi_files, tmp_path):
    f = dwi_files
    up.upscale_file(f["root"] / "dwi.nii.gz", tmp_path / "sr.nii.gz", f["root"] / "t1.nii.gz",
                    scale=2, model=str(f["model"]), device="cpu", calibrate=True)
    entry = json.loads((tmp_path / "sr.json").read_text())["detail_gain"]
    assert 0.0 <= entry["gain"] <= 1.0 and len(entry["volumes"]) == 4
    assert entry["pair_shape"] == [6, 7, 5]


def test_4d_series_upscaled_with_a_3d_model(dwi_files, tmp_path):
    f = dwi_files
    ph = f["phantom"]
    img = up.upscale_file(f["root"] / "dwi.nii.gz", tmp_path / "sr.nii.gz",
                          f["root"] / "t1.nii.gz", scale=2, model=str(f["model"]),
                          device="cpu")
    sr = np.asarray(img.dataobj)
    assert img.shape == (24, 28, 20, 7) and img.get_data_dtype() == np.float32
    # FOV-preserving grid: x2 of the x2-degraded grid is the phantom's own grid.
    np.testing.assert_allclose(img.affine, ph.affine, atol=1e-5)
    assert np.isfinite(sr).all() and sr.min() >= 0
    for ext in ("bval", "bvec"):
        assert (tmp_path / f"sr.{ext}").read_text() == (f["root"] / f"dwi.{ext}").read_text()
    info = json.loads((tmp_path / "sr.json").read_text())
    assert info["architecture"]["architecture"] == "csr_dmri" and info["volumes"] == 7
    assert info["normalisation"]["method"] == "robust_max_per_volume"
    assert info["normalisation"]["mask_from"] == "mean_b0"
    assert info["normalisation"]["b0_volumes"] == 1
    assert info["reference"]["brain_covered_fraction"] == 1.0
    assert info["output_voxel_size"] == pytest.approx([2.5, 2.5, 2.5])
    # Outside the brain the output is the cubic interpolation of the input.
    cubic = spline_resize(f["lr"][..., 3], sr.shape[:3])
    np.testing.assert_allclose(sr[0, 0, 0, 3], max(cubic[0, 0, 0], 0), rtol=1e-5, atol=1e-4)
    # Decoding into a memory-mapped volume buffer gives the same series.
    mapped = up.upscale_file(f["root"] / "dwi.nii.gz", tmp_path / "mm.nii.gz",
                             f["root"] / "t1.nii.gz", scale=2, model=str(f["model"]),
                             device="cpu", memmap=True)
    np.testing.assert_array_equal(np.asarray(mapped.dataobj), sr)


@pytest.mark.parametrize("name", ["dwi", "nobval"])
def test_3d_path_adds_the_model_correction_in_the_input_units(dwi_files, tmp_path, monkeypatch,
                                                                name):
    """A model that adds 0.05 to the cubic interpolation of what it is given: the output must be
    the cubic interpolation of the input volume plus 0.05 times the volume's robust maximum
    inside the brain, and the cubic interpolation alone outside it."""
    f = dwi_files
    seen = []
    offset = 0.05

    def shifted_cubic_model(self, lr, out_shape, t1=None, out=None, progress=None):
        seen.append(float(lr.max()))
        return spline_resize(lr, out_shape).astype(np.float32) + np.float32(offset)
    monkeypatch.setattr(VolumeUpscaler, "__call__", shifted_cubic_model)
    up.upscale_file(f["root"] / f"{name}.nii.gz", tmp_path / "sr.nii.gz",
                    f["root"] / "t1.nii.gz", scale=2, model=str(f["model"]), device="cpu")
    sr = np.asarray(nib.load(str(tmp_path / "sr.nii.gz")).dataobj)
    info = json.loads((tmp_path / "sr.json").read_text())["normalisation"]
    assert info["method"] == "robust_max_per_volume"
    assert info["mask_from"] == ("mean_b0" if name == "dwi" else "mean_volume")
    # The model saw intensities about [0, 1], not scanner units (the series is scaled by 1000).
    assert max(seen) <= 2.0 and min(seen) > 0.5
    runner = SeriesUpscaler3D(Volume(f["lr"], f["lr_affine"]),
                              Volume(f["phantom"].t1w, f["phantom"].affine),
                              up.load_model(str(f["model"]), True), sr.shape[:3],
                              f["phantom"].affine, f["phantom"].bvals if name == "dwi" else None)
    inside = runner.mask_hr
    assert inside.any() and (~inside).any()
    for v in (0, 4):
        cubic = spline_resize(f["lr"][..., v], sr.shape[:3])
        factor = robust_max(f["lr"][..., v][runner.mask])
        expected = np.where(inside, cubic + offset * factor, cubic)
        np.testing.assert_allclose(sr[..., v], np.clip(expected, 0, None), rtol=1e-4,
                                   atol=1e-3 * factor)


def test_upscale_registers_a_shifted_t1w_to_the_mean_b0(dwi_files, monkeypatch):
    pytest.importorskip("dipy.align")
    f = dwi_files
    ph = f["phantom"]
    shift = np.array([4.0, -3.0, 2.0])  # mm: a header that misplaces the T1w
    moved = ph.affine.copy()
    moved[:3, 3] += shift
    t1 = Volume(ph.t1w, moved)
    pack = up.load_model(str(f["model"]), True)
    brain = ph.brain_mask

    def runner(register, pack=pack, t1=t1):
        return SeriesUpscaler3D(Volume(f["lr"], f["lr_affine"]), t1, pack, ph.dwi.shape[:3],
                                ph.affine, ph.bvals, device="cpu", register=register)

    def placed(register, pack=pack):
        return runner(register, pack).info["reference"]["registered"]

    # Distance (mean absolute difference in the brain) to the T1w placed through its true header.
    truth = runner(False, t1=Volume(ph.t1w, ph.affine)).t1

    def error(r):
        return float(np.abs(r.t1 - truth)[brain].mean())
    misplaced, registered = error(runner(False)), error(runner(True))
    assert misplaced > 0.1 * float(truth[brain].max())  # the header error is visible ...
    assert registered < 0.35 * misplaced                  # ... and registration removes most of it
    # Registering a T1w whose header is right leaves it (nearly) where it is.
    assert error(runner(True, t1=Volume(ph.t1w, ph.affine))) < 0.1 * misplaced
    # By default the T1w is placed as in the model's training (this checkpoint has no config).
    assert pack[1]["t1_registered_in_training"] is False and placed(None) is False
    trained_registered = (pack[0], {**pack[1], "t1_registered_in_training": True})
    assert placed(None, trained_registered) is True
    # Without dipy the default falls back to the headers (an explicit register would fail).
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "dipy" else real(name, *a))
    assert placed(None, trained_registered) is False


def test_3d_model_on_a_single_volume_and_missing_reference(dwi_files):
    f = dwi_files
    pack = up.load_model(str(f["model"]), has_reference=True)
    vol = Volume(f["lr"][..., 2], f["lr_affine"])
    t1 = Volume(f["phantom"].t1w, f["phantom"].affine)
    result = up.upscale(vol, t1, scale=2, device="cpu", loaded_model=pack)
    assert result.data.shape == (24, 28, 20) and result.data.dtype == np.float32
    assert result.info["normalisation"]["method"] == "robust_max_per_volume"
    with pytest.raises(InputError, match="needs a T1w"):
        SeriesUpscaler3D(vol, None, pack, (24, 28, 20), f["phantom"].affine)


def test_default_model_of_a_series_with_reference(dwi_files, tmp_path, monkeypatch, capsys):
    from mrisr.inference import selection
    from mrisr.models import registry
    default = up.DEFAULT_DMRI_MODEL
    monkeypatch.setattr(registry, "weights_path", lambda name: dwi_files["model"]
                        if name == default else tmp_path / "absent.pt")
    root = dwi_files["root"]
    assert up.is_series_file(root / "dwi.nii.gz") and not up.is_series_file(root / "t1.nii.gz")

    def run(name):
        code = main(["upscale", str(root / "dwi.nii.gz"), "--ref", str(root / "t1.nii.gz"),
                     "--scale", "2", "-o", str(tmp_path / f"{name}.nii.gz"), "--device", "cpu",
                     "-q"])
        assert code == 0
        return json.loads((tmp_path / f"{name}.json").read_text())

    # Shipped weights that did not beat cubic on other scanners are no series default ...
    assert up.default_model_name(True, series=True) == selection.SERIES_FALLBACK == "cubic"
    assert up.default_model_name(False, series=True) == "cubic"
    side = run("fallback")
    assert side["model"] == "cubic" and "no shipped model beats it" in side["note"]
    assert "no shipped model beats it" in capsys.readouterr().err
    # ... ones that did are.
    monkeypatch.setattr(selection, "DMRI_MODELS_ABOVE_CUBIC", (default,))
    assert up.default_model_name(True, series=True) == default
    assert up.default_model_name(True) == selection.DEFAULT_MODEL_FALLBACK  # weights "absent"
    assert up.default_model_name(False, series=True) == "cubic"  # trained without T1w dropout
    assert run("model")["model"] == default


# -- evaluation -------------------------------------------------------------------------------

# The phantom of test_dmri.dmri_config; its top 11 slices (40 %) hold brain voxels where the
# whole 7^3 SSIM window fits. Models evaluated on it are trained with the same holdout.
HOLDOUT = 0.4
PHANTOM_EVAL = {"task": "dmri3d",
                "dmri": {"kind": "phantom", "phantom_shape": [28, 32, 28],
                         "phantom_voxel_size": [4, 4, 4], "region": "holdout",
                         "holdout_fraction": HOLDOUT}}


def test_scale_categories():
    assert [scale_category(s, [2, 3]) for s in (2, 3, 4, 2.4, 1.5)] == [
        "in-distribution", "in-distribution", "out-of-distribution", "non-integer",
        "out-of-distribution"]


def test_phantom_evaluation_with_a_trained_model(tmp_path, capsys):
    final = train(dmri_config(tmp_path, holdout_fraction=HOLDOUT), show_progress=False)
    cfg = {**PHANTOM_EVAL, "output": str(tmp_path / "eval"),
           "methods": [{"name": "cubic"},
                       {"name": "model3d", "args": {"model": str(final)}, "label": "CSR"}]}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", str(tmp_path / "eval.yaml"), "-q"]) == 0
    table = (tmp_path / "eval" / "table.md").read_text()
    assert table in capsys.readouterr().out
    header = next(line for line in table.splitlines() if line.startswith("| Method | x2"))
    assert header.split(" | ")[1:] == [
        "x2 PSNR", "x2 SSIM", "x3 PSNR", "x3 SSIM", "x4 (OOD) PSNR", "x4 (OOD) SSIM",
        "x2.4 (non-int.) PSNR", "x2.4 (non-int.) SSIM |"]
    assert "x4 (OOD) FA | x4 (OOD) MD | x4 (OOD) angle" in table
    assert sum(line.startswith(("| cubic |", "| CSR |")) for line in table.splitlines()) == 4
    rows = (tmp_path / "eval" / "cases.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 2 * 16  # scales x methods x directions
    assert "| 15 | 1000 |" in (tmp_path / "eval" / "directions.md").read_text()


def test_phantom_evaluation_scores_and_determinism():
    cfg = from_dict(DmriEvaluateConfig, PHANTOM_EVAL)
    a = evaluate_dmri(cfg, show_progress=False)
    b = evaluate_dmri(cfg, show_progress=False)
    assert a.rows == b.rows and a.tensor_rows == b.tensor_rows
    psnr = {r["scale"]: r["psnr"] for r in a.case_rows}
    # Cubic interpolation loses more at larger factors, in the image and in the tensor fit.
    assert psnr["2"] > psnr["2.4"] > psnr["3"] > psnr["4"]
    fa_mae = {r["scale"]: r["fa_mae"] for r in a.tensor_rows}
    md_mae = {r["scale"]: r["md_mae"] for r in a.tensor_rows}
    angle = {r["scale"]: r["angle_mean_deg"] for r in a.tensor_rows}
    for err in (fa_mae, md_mae, angle):
        assert err["2"] < err["3"] < err["4"], err
    assert {r["wm_voxels"] for r in a.tensor_rows} == {a.tensor_rows[0]["wm_voxels"]}
    one = [r for r in a.rows if r["scale"] == "3"]
    assert len(one) == 16 and psnr["3"] == pytest.approx(np.mean([r["psnr"] for r in one]))


def test_dmri_config_errors_are_one_line(tmp_path, capsys):
    cases = [({"dmri": {"kind": "phantom", "regoin": "whole"}}, "unknown key 'dmri.regoin'"),
             ({"methods": [{"name": "model", "args": {"model": "x.pt"}}]}, "with 'model3d'"),
             ({"scales": [2, 0.5]}, "scales must be"),
             ({"dmri": {"kind": "phantom", "phantom_shape": [28, 32, 28],
                        "phantom_voxel_size": [4, 4, 4], "holdout_fraction": 0.1}},
              "smaller than the SSIM window"),
             ({"methods": [{"name": "model3d", "args": {"model": str(tmp_path / "no.pt")}}]},
              "checkpoint not found")]
    for extra, message in cases:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"task": "dmri3d", **extra}))
        assert main(["evaluate", str(tmp_path / "bad.yaml"), "-q"]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"task": "dmri"}))
    assert main(["evaluate", str(tmp_path / "bad.yaml"), "-q"]) == 2
    assert "task must be slices2d" in capsys.readouterr().err


def test_shipped_dmri_configs_parse():
    for name in ("train_csr_dmri_s_philips", "train_arssr_s_philips",
                 "dmri_table2/baseline", "dmri_table2/m1", "dmri_table2/m2"):
        cfg = load_train_config(CONFIGS / f"{name}.yaml")
        assert isinstance(cfg, TrainConfig) and cfg.task == "dmri3d"
        assert cfg.dmri.holdout_axis == 2 and cfg.dmri.holdout_fraction == 0.25
        assert cfg.run.threads == 1
    main_cfgs = [load_train_config(CONFIGS / f"train_{m}_philips.yaml")
                 for m in ("csr_dmri_s", "arssr_s", "csr_dmri_s_m1", "csr_dmri_s_own")]
    ablations = [load_train_config(CONFIGS / f"dmri_table2/{m}.yaml")
                 for m in ("baseline", "m1", "m2")]
    assert all(c.dmri.frequency_weight == 0 and c.total_steps == main_cfgs[0].total_steps
               and c.optim == main_cfgs[0].optim for c in ablations)
    assert [c.model.name for c in ablations] == ["csr_dmri_s_baseline", "csr_dmri_s_m1",
                                                 "csr_dmri_s"]
    assert len({c.total_steps for c in main_cfgs}) == 1
    assert all(c.run.max_minutes == 60 and c.optim == main_cfgs[0].optim for c in main_cfgs)
    assert [c.model.name for c in main_cfgs] == ["csr_dmri_s", "arssr_s", "csr_dmri_s_m1",
                                                 "csr_dmri_s_own"]
    for name in ("philips", "siemens", "table2"):
        cfg = from_dict(DmriEvaluateConfig, load_yaml(CONFIGS / f"eval_dmri_{name}.yaml"))
        assert cfg.scales == [2, 3, 4, 2.4]
    siemens = from_dict(DmriEvaluateConfig, load_yaml(CONFIGS / "eval_dmri_siemens.yaml"))
    assert siemens.dmri.bvalue == 2500 and siemens.dmri.region == "whole"


def test_training_resumes_and_the_checkpoint_evaluates(tmp_path):
    cfg = dmri_config(tmp_path, holdout_fraction=HOLDOUT)
    cfg.curriculum[0].steps = 2
    train(cfg, show_progress=False)
    cfg.curriculum[0].steps = 3
    final = train(cfg, resume="auto", show_progress=False)
    from mrisr.models import load_checkpoint
    assert load_checkpoint(final).payload["step"] == 3
    ecfg = from_dict(DmriEvaluateConfig, {**PHANTOM_EVAL, "scales": [2], "tensor": False,
                                          "methods": [{"name": "model3d",
                                                       "args": {"model": str(final)}}]})
    result = evaluate_dmri(ecfg, show_progress=False)
    paths = write_dmri_report(result, tmp_path / "eval")
    assert "tensor" not in paths and "FA" not in paths["table"].read_text()
    assert result.case_rows[0]["reference"] == "t1"
