"""dMRI across scanners: multi-series loading (interleaved b=0s, several shells), leave-one-out
selection, padding of thin series, the diffusion randomisation, T1w dropout, test-time
adaptation of 3D models and the signal-space evaluation protocol. Small generated data."""
import json

import numpy as np
import pytest
import torch

from mrisr.config import from_dict
from mrisr.data.dwi import load_dwi_subject, select_shell
from mrisr.data.phantom import make_dwi_phantom
from mrisr.degradation import degrade_volume, spline_resize
from mrisr.errors import ConfigError, InputError
from mrisr.evaluation.dmri import DmriEvaluateConfig, evaluate_dmri, write_dmri_report
from mrisr.evaluation.diffusion import evaluate_dwi_volume
from mrisr.inference.upscale import load_model, upscale_file
from mrisr.inference.volume3d import SeriesUpscaler3D, adapt_volume_model
from mrisr.io import load_nifti, save_nifti, write_bvals, write_bvecs
from mrisr.models import create_model, save_checkpoint
from mrisr.training import build_task
from mrisr.training.config import TrainConfig
from mrisr.training.volumes import VolumePatchTask

TINY_3D = {"G0": 8, "D": 1, "C": 2, "G": 8, "feature_channels": 8, "hidden": 16}


def tiny(**args):
    torch.manual_seed(0)
    return create_model("csr_dmri", **TINY_3D, **args).eval()


@pytest.fixture(scope="module")
def series_files(tmp_path_factory):
    """Three small series on disk: ``a`` with interleaved b=0s and two shells (b=1000, 2000)
    and a T1w, ``b`` single-shell b=1500 without T1w, ``thin`` with 12 slices."""
    root = tmp_path_factory.mktemp("series")
    out = {}
    for name, shape, bvalue, seed in (("a", (28, 32, 24), 1000.0, 0),
                                      ("b", (28, 28, 24), 1500.0, 1),
                                      ("thin", (28, 32, 12), 1000.0, 2)):
        ph = make_dwi_phantom(shape, (3.0, 3.0, 3.0), n_directions=6, bvalue=bvalue, seed=seed)
        dwi, bvals, bvecs = ph.dwi * 800.0, ph.bvals, ph.bvecs
        if name == "a":
            # A second shell from the first one's attenuation (b=2000: squared), and a second
            # b=0 (slightly different) interleaved in the middle.
            b0 = ph.dwi[..., :1]
            att = np.divide(ph.dwi[..., 1:], b0, out=np.zeros_like(ph.dwi[..., 1:]),
                            where=b0 > 0)
            high = att ** 2 * ph.dwi[..., :1]
            b0b = ph.dwi[..., :1] * 1.1
            dwi = np.concatenate([ph.dwi[..., :4], b0b, ph.dwi[..., 4:], high], -1) * 800.0
            bvals = np.concatenate([bvals[:4], [5.0], bvals[4:], np.full(6, 2000.0)])
            bvecs = np.concatenate([bvecs[:, :4], np.zeros((3, 1)), bvecs[:, 4:],
                                    ph.bvecs[:, 1:]], 1)
            save_nifti(ph.t1w, ph.affine, root / "a_t1.nii.gz")
        save_nifti(dwi.astype(np.float32), ph.affine, root / f"{name}.nii.gz")
        write_bvals(root / f"{name}.bval", bvals)
        write_bvecs(root / f"{name}.bvec", bvecs)
        out[name] = {"dwi": str(root / f"{name}.nii.gz"), "bvals": bvals, "data": dwi}
    out["a"]["t1"] = str(root / "a_t1.nii.gz")
    out["root"] = root
    return out


def subjects_section(f, **extra):
    return {"kind": "files", "all_shells": True,
            "subjects": [{"name": "a", "dwi": f["a"]["dwi"], "t1": f["a"]["t1"]},
                         {"name": "b", "dwi": f["b"]["dwi"]},
                         {"name": "thin", "dwi": f["thin"]["dwi"]}], **extra}


def train_config(f, model_args=None, **dmri) -> TrainConfig:
    model_args = {"use_t1": False} if model_args is None else model_args
    section = {**subjects_section(f), "holdout_fraction": 0.0, "pad_to_patch": True,
               "lr_patch": 5, "scale_range": [2, 3], **dmri}
    return from_dict(TrainConfig, {
        "task": "dmri3d", "model": {"name": "csr_dmri", "args": {**TINY_3D, **(model_args or {})}},
        "dmri": section, "curriculum": [{"name": "train", "steps": 2}],
        "optim": {"batch_size": 4}, "run": {"seed": 3, "threads": 1}})


def task_for(f, model_args=None, **dmri):
    model_args = {"use_t1": False} if model_args is None else model_args
    cfg = train_config(f, model_args, **dmri)
    torch.manual_seed(0)
    model = create_model("csr_dmri", **TINY_3D, **(model_args or {}))
    return build_task(cfg, model), model


# -- loading ----------------------------------------------------------------------------------

def test_every_weighted_volume_and_interleaved_b0s(series_files):
    f = series_files["a"]
    b = f["bvals"]
    np.testing.assert_array_equal(select_shell(b, None), np.flatnonzero(b > 50))
    with pytest.raises(InputError, match="no diffusion-weighted volume"):
        select_shell(np.zeros(3), None)
    s = load_dwi_subject(f["dwi"], bvalue=None, name="a")
    assert s.name == "a" and s.shell.shape[3] == 12
    assert sorted(set(s.bvals.tolist())) == [1000.0, 2000.0]
    # The mean b=0 averages both b=0 volumes, the interleaved one included.
    np.testing.assert_allclose(s.mean_b0, f["data"][..., [0, 4]].mean(-1), rtol=1e-5)
    # b=2000 was made as the squared b=1000 attenuation of the first b=0 (the mean b=0 is
    # 1.05 times it): both divided by the mean b=0, A_2000 = 1.05 A_1000^2.
    inside = s.mask
    np.testing.assert_allclose(s.shell[..., 6:][inside],
                               (1.05 * s.shell[..., :6] ** 2)[inside], rtol=1e-4, atol=1e-6)
    only = load_dwi_subject(f["dwi"], bvalue=2000, name="a")
    assert only.shell.shape[3] == 6 and set(only.bvals.tolist()) == {2000.0}


def test_holdout_selects_subjects_and_is_validated(series_files):
    f = series_files
    cfg = train_config(f, holdout="b")
    assert [s.label for s in cfg.dmri.selected_subjects(training=True)] == ["a", "thin"]
    assert [s.label for s in cfg.dmri.selected_subjects(training=False)] == ["b"]
    task, _ = task_for(f, holdout="b")
    assert [s.name for s in task.subjects] == ["a", "thin"]
    assert task.describe_data()["holdout"]["subject"] == "b"
    with pytest.raises(ConfigError, match="holdout 'c' is not a subject"):
        train_config(f, holdout="c")
    with pytest.raises(ConfigError, match="unique names"):
        train_config(f, subjects=[{"name": "x", "dwi": f["a"]["dwi"]},
                                  {"name": "x", "dwi": f["b"]["dwi"]}])


def test_thin_series_are_padded_only_when_asked(series_files):
    with pytest.raises(InputError, match="pad_to_patch"):
        task_for(series_files, pad_to_patch=False)
    task, model = task_for(series_files)
    thin = task.subjects[2]
    # scale_range 3 x lr_patch 5 = 15 > 12 slices: 3 zero slices at the low end.
    assert thin.shape[2] == 15 and not thin.mask[..., :3].any()
    assert not thin.shell[..., :3, :].any()
    original = load_dwi_subject(series_files["thin"]["dwi"], bvalue=None)
    assert thin.mask.sum() == original.mask.sum()
    np.testing.assert_allclose(thin.affine[:3, 3] - 3 * thin.affine[:3, 2],
                               original.affine[:3, 3] - 6 * original.affine[:3, 2])
    for step in range(6):
        batch = task.batch(step)
        assert torch.isfinite(batch["lr"]).all() and torch.isfinite(batch["hr"]).all()
    loss, _ = task.loss(model, task.batch(0))
    assert torch.isfinite(loss)


# -- randomisation ----------------------------------------------------------------------------

def _samples(task, steps=6):
    """(plan, batch item arrays) of the first ``steps`` batches."""
    out = []
    for step in range(steps):
        batch = task.batch(step)
        _, plans = task._plan(step)
        for i, plan in enumerate(plans):
            out.append((plan, {k: batch[k][i].numpy() for k in ("lr", "hr", "ref", "brain")
                               if k in batch}))
    return out


def test_t1_dropout_zeroes_some_t1w_patches_and_allows_series_without_t1w(series_files):
    f = series_files
    with pytest.raises(InputError, match="T1w"):
        task_for(f, model_args={"use_t1": True}, t1_dropout=0.0)
    t1 = {"use_t1": True}
    plain, _ = task_for(f, t1, t1_dropout=1e-9, holdout="b")   # "thin" has no T1w either
    dropped, _ = task_for(f, t1, t1_dropout=0.5, holdout="b")
    n_zero = n_kept = 0
    for (plan, a), (_, b) in zip(_samples(plain), _samples(dropped)):
        np.testing.assert_array_equal(a["hr"], b["hr"])
        np.testing.assert_array_equal(a["lr"], b["lr"])
        if plan[0] == 1:            # the series without a T1w: always zero
            assert not a["ref"].any() and not b["ref"].any()
        elif not b["ref"].any():
            n_zero += 1
        else:
            np.testing.assert_array_equal(a["ref"], b["ref"])
            n_kept += 1
    assert n_zero > 0 and n_kept > 0


def test_noise_bias_and_antialiasing_touch_only_their_part(series_files):
    base = dict(holdout="a", domain="signal", loss_region="brain")
    plain = _samples(task_for(series_files, **base)[0])
    noisy = _samples(task_for(series_files, noise=[0.05, 0.1], noise_fraction=1.0, **base)[0])
    for (_, a), (_, b) in zip(plain, noisy):
        np.testing.assert_array_equal(a["hr"], b["hr"])
        inside = spline_resize(a["brain"][0].astype(np.float32), a["lr"].shape[1:],
                               order=1) >= 0.5
        assert np.array_equal(a["lr"][0][~inside], b["lr"][0][~inside])
        if inside.any():
            assert np.abs(a["lr"][0][inside] - b["lr"][0][inside]).mean() > 0.01
    biased = _samples(task_for(series_files, bias=0.3, **base)[0])
    for (_, a), (_, b) in zip(plain, biased):
        ratio = b["hr"][a["hr"] > 0.05] / a["hr"][a["hr"] > 0.05]
        assert np.all(ratio > np.exp(-0.3) - 1e-4) and np.all(ratio < np.exp(0.3) + 1e-4)
        np.testing.assert_allclose(b["lr"][0], spline_resize(b["hr"][0], b["lr"].shape[1:], 3),
                                   atol=1e-5)
    assert any(not np.allclose(a["hr"], b["hr"]) for (_, a), (_, b) in zip(plain, biased))
    smooth = _samples(task_for(series_files, antialias_fraction=0.5, **base)[0])
    kinds = []
    for (_, a), (_, b) in zip(plain, smooth):
        np.testing.assert_array_equal(a["hr"], b["hr"])
        aa = spline_resize(b["hr"][0], b["lr"].shape[1:], 3, antialias=True)
        if np.allclose(b["lr"][0], aa, atol=1e-5):
            kinds.append("aa")
            assert not np.allclose(a["lr"][0], aa, atol=1e-5)
        else:
            np.testing.assert_array_equal(a["lr"], b["lr"])
            kinds.append("plain")
    assert set(kinds) == {"aa", "plain"}


def test_bvalue_power_and_mixing_synthesise_volumes(series_files):
    f = series_files
    base = dict(holdout="a", domain="attenuation")
    task, _ = task_for(f, **base)
    power_task, _ = task_for(f, bvalue_power=[0.5, 2.0], bvalue_power_fraction=1.0, **base)
    mix_task, _ = task_for(f, bvalue_mix=1.0, **base)
    for step in range(3):
        plain, power, mix = task.batch(step), power_task.batch(step), mix_task.batch(step)
        _, plans = task._plan(step)
        for i, (subject, volume, _, seed, _) in enumerate(plans):
            draws = power_task._draws(seed, subject)
            k = draws["power"]
            assert 0.5 <= k <= 2.0
            np.testing.assert_allclose(power["hr"][i].numpy(), plain["hr"][i].numpy() ** k,
                                       rtol=1e-4, atol=1e-6)
            other, w = mix_task._draws(seed, subject)["mix"]
            s = task.subjects[subject]
            crop = tuple(slice(int(o), int(o) + n) for o, n in
                         zip(plain["origin"][i].numpy(), plain["hr_shape"]))
            expected = w * s.shell[crop + (volume,)] + (1 - w) * s.shell[crop + (other,)]
            np.testing.assert_allclose(mix["hr"][i, 0].numpy(), expected, rtol=1e-4, atol=1e-6)
    # Signal domain: a synthesised volume is renormalised to a robust maximum of about 1.
    sig, _ = task_for(f, holdout="a", domain="signal", bvalue_power=[2.0, 2.0],
                      bvalue_power_fraction=1.0)
    values = np.concatenate([sig.batch(s)["hr"].numpy().ravel() for s in range(4)])
    assert 0.7 < np.percentile(values[values > 0], 99.5) < 1.5


def test_include_b0_adds_the_mean_b0_as_a_signal_volume(series_files):
    with pytest.raises(ConfigError, match="include_b0"):
        train_config(series_files, include_b0=True)
    task, _ = task_for(series_files, holdout="a", domain="signal", include_b0=True)
    s = task.subjects[0]
    assert s.bvals[-1] == 0 and s.shell.shape[3] == 7
    b0 = s.shell[..., -1]
    original = load_dwi_subject(series_files["b"]["dwi"], bvalue=None)
    ratio = b0[original.mask] / original.mean_b0[original.mask]
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)


# -- adaptation -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lr_series(tmp_path_factory):
    root = tmp_path_factory.mktemp("lr")
    ph = make_dwi_phantom((24, 28, 20), (2.5, 2.5, 2.5), n_directions=6)
    lr, lr_affine = degrade_volume(ph.dwi * 1000.0, ph.affine, 2, kind="bicubic")
    save_nifti(lr, lr_affine, root / "dwi.nii.gz")
    write_bvals(root / "dwi.bval", ph.bvals)
    write_bvecs(root / "dwi.bvec", ph.bvecs)
    save_nifti(ph.t1w, ph.affine, root / "t1.nii.gz")
    save_checkpoint(root / "tiny.pt", tiny(use_t1=False))
    save_checkpoint(root / "tiny_t1.pt", tiny())
    dropout = tiny(use_t1=True)
    save_checkpoint(root / "dropout.pt", dropout,
                    train_config={"dmri": {"t1_dropout": 0.3, "register": False}})
    save_checkpoint(root / "strict.pt", tiny(use_t1=True))
    return {"root": root, "phantom": ph, "lr": lr, "lr_affine": lr_affine}


def test_adaptation_fine_tunes_a_copy_at_the_requested_scale(lr_series):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lr = lr_series["lr"]
    mask = lr[..., 0] > 0.1 * lr[..., 0].max()
    volumes = lr / lr.max()
    seen = []
    result = adapt_volume_model(model, volumes, mask, (2, 2, 2), steps=4, lr=1e-3,
                                progress=seen.append)
    assert len(result.losses) == 4 and seen == [1] * 4 and result.seconds > 0
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    changed = [k for k, v in result.model.state_dict().items()
               if not torch.equal(v, before[k])]
    assert changed and not result.model.training
    again = adapt_volume_model(model, volumes, mask, (2, 2, 2), steps=4, lr=1e-3)
    assert again.losses == result.losses          # deterministic
    with pytest.raises(InputError, match=">= 1"):
        adapt_volume_model(model, volumes, mask, (0.5, 2, 2), steps=1)


def test_fixed_scales_make_every_patch_at_the_requested_factors(series_files):
    cfg = train_config(series_files, holdout="a")
    subjects = [load_dwi_subject(series_files["b"]["dwi"], bvalue=None)]
    task = VolumePatchTask(cfg, subjects, use_t1=False, fixed_scales=(2.0, 2.0, 3.0))
    for step in range(4):
        batch = task.batch(step)
        assert batch["hr_shape"] == (10, 10, 15) and batch["lr"].shape[2:] == (5, 5, 5)
        torch.testing.assert_close(batch["scales"], torch.tensor([2.0, 2.0, 3.0],
                                                                 dtype=torch.float64))


def test_upscale_adapt_on_a_4d_series_with_a_3d_model(lr_series, tmp_path):
    root = lr_series["root"]
    grown, done = [], []
    out = tmp_path / "sr.nii.gz"
    upscale_file(root / "dwi.nii.gz", out, root / "t1.nii.gz", model=str(root / "tiny_t1.pt"),
                 shape=lr_series["phantom"].dwi.shape[:3], device="cpu", register=False,
                 adapt=3, on_start=grown.append, progress=done.append)
    info = json.loads((tmp_path / "sr.json").read_text())
    assert info["adapt"]["steps"] == info["adapt"]["steps_requested"] == 3
    assert info["adapt"]["volumes"] == 7 and info["adapt"]["seconds"] > 0
    assert info["decisions"]["adaptation"]["choice"] == info["adapt"]["used"]
    assert sum(grown) == sum(done) == 7 * 24 + 3
    plain = tmp_path / "plain.nii.gz"
    upscale_file(root / "dwi.nii.gz", plain, root / "t1.nii.gz", model=str(root / "tiny_t1.pt"),
                 shape=lr_series["phantom"].dwi.shape[:3], device="cpu", register=False)
    a, b = load_nifti(out, ndim=(4,)).data, load_nifti(plain, ndim=(4,)).data
    assert a.shape == b.shape == (24, 28, 20, 7)
    # The fine-tuned copy upscales only when it beat the model on the held-out slab.
    assert (info["adapt"]["used"] == "adapted") != np.array_equal(a, b)
    with pytest.raises(InputError, match="interpolation"):
        upscale_file(root / "dwi.nii.gz", tmp_path / "c.nii.gz", model="cubic", scale=2,
                     adapt=2)


def test_a_t1w_dropout_model_runs_without_a_t1w(lr_series):
    root = lr_series["root"]
    target = load_nifti(root / "dwi.nii.gz", ndim=(4,))
    pack = load_model(str(root / "dropout.pt"), has_reference=False, series=True)
    assert pack[1]["t1_dropout"] == pytest.approx(0.3)
    runner = SeriesUpscaler3D(target, None, pack, (24, 28, 20), lr_series["phantom"].affine,
                              lr_series["phantom"].bvals, device="cpu")
    assert not runner.t1.any() and runner.info["reference"]["path"] is None
    assert runner.upscale(1).data.shape == (24, 28, 20)
    with pytest.raises(InputError, match="reference"):
        load_model(str(root / "strict.pt"), has_reference=False, series=True)


# -- the signal protocol ------------------------------------------------------------------------

def signal_config(series_files, methods, **extra) -> DmriEvaluateConfig:
    return from_dict(DmriEvaluateConfig, {
        "task": "dmri3d", "protocol": "signal",
        "dmri": {**subjects_section(series_files), "holdout": "b", "region": "whole"},
        "scales": [2.0], "methods": methods, **extra})


def test_signal_protocol_scores_cubic_as_a_users_series_would_be(series_files):
    cfg = signal_config(series_files, [{"name": "cubic"}], volumes=3, tensor=False)
    result = evaluate_dmri(cfg, show_progress=False)
    row, = result.case_rows
    assert row["subject"] == "b" and row["method"] == "cubic"
    # By hand: every volume degraded in signal space, cubic interpolation back, clipped at 0.
    hr = load_nifti(series_files["b"]["dwi"], ndim=(4,)).data
    lr, _ = degrade_volume(hr, np.eye(4), 2, kind="bicubic")
    weighted = np.flatnonzero(series_files["b"]["bvals"] > 50)
    scored = weighted[np.linspace(0, weighted.size - 1, 3).round().astype(int)]
    from mrisr.data.dwi import brain_mask
    mask = brain_mask(hr[..., 0])
    pred = np.stack([np.clip(spline_resize(lr[..., v], hr.shape[:3], 3), 0, None)
                     for v in scored], -1)
    expected = evaluate_dwi_volume(pred, hr[..., scored], mask)
    assert row["psnr"] == pytest.approx(expected["psnr"], abs=1e-4)
    assert [r["direction"] for r in result.rows] == scored.tolist()
    aa = evaluate_dmri(signal_config(series_files, [{"name": "cubic"}], volumes=3,
                                     tensor=False, degradation="bicubic_aa"),
                       show_progress=False)
    assert aa.case_rows[0]["psnr"] != pytest.approx(row["psnr"], abs=1e-3)


def test_signal_protocol_runs_models_adapted_or_not_and_fits_tensors(series_files, lr_series,
                                                                     tmp_path):
    pytest.importorskip("dipy.reconst.dti")
    model = str(lr_series["root"] / "tiny.pt")
    strict = str(lr_series["root"] / "strict.pt")
    methods = [{"name": "cubic"},
               {"name": "upscale", "label": "tiny", "args": {"model": model, "device": "cpu"}},
               {"name": "upscale", "label": "tiny + adapt",
                "args": {"model": model, "adapt": 2, "device": "cpu"}},
               {"name": "upscale", "label": "needs T1w", "args": {"model": strict}}]
    result = evaluate_dmri(signal_config(series_files, methods, volumes=2),
                           show_progress=False)
    labels = [r["method"] for r in result.case_rows]
    assert labels == ["cubic", "tiny", "tiny + adapt"]       # "b" has no T1w: skipped
    by = {r["method"]: r for r in result.case_rows}
    assert by["tiny + adapt"]["adapt_steps"] == 2 and by["tiny"]["adapt_steps"] == 0
    # The fine-tuned copy upscales only when it beat the model on the held-out slab.
    adapted = by["tiny + adapt"]["adapt_used"] == "adapted"
    assert adapted == (by["tiny + adapt"]["psnr"] != by["tiny"]["psnr"])
    assert by["tiny"]["adapt_used"] == "-"
    assert len(result.tensor_rows) == 3
    fa = {r["method"]: r["fa_mae"] for r in result.tensor_rows}
    assert all(r["wm_voxels"] > 1000 for r in result.tensor_rows)
    # Cubic interpolation keeps the phantom's tensors; the untrained tiny model does not.
    assert fa["cubic"] < 0.1 < fa["tiny"]
    table = write_dmri_report(result, tmp_path)["table"].read_text()
    cost = table.split("**Cost")[1]
    row = next(line for line in cost.splitlines() if line.startswith("| tiny + adapt |"))
    seconds, adapt_cell = row.strip(" |").split(" | ")[1:]
    assert adapt_cell != "-" and float(adapt_cell) <= float(seconds)
    assert 0 < by["tiny + adapt"]["adapt_seconds"] < by["tiny + adapt"]["seconds"]
    assert next(line for line in cost.splitlines()
                if line.startswith("| cubic |")).endswith("| - |")
    with pytest.raises(ConfigError, match="signal protocol"):
        signal_config(series_files, [{"name": "model3d_typo"}])
    with pytest.raises(ConfigError, match="unknown args"):
        signal_config(series_files, [{"name": "upscale", "args": {"model": model, "x": 1}}])


# -- the real series ----------------------------------------------------------------------------

def test_every_shared_dwi_series_trains_through_the_multivendor_config():
    """All nine series of ../shared/data (interleaved and several b=0s, b=1000-2500, sagittal
    slices, 25-slice thick-slice series) load and give finite patches; no T1w registration."""
    from conftest import shared_dataset
    from mrisr.training import load_train_config

    shared_dataset("dwi-multivendor")
    cfg = load_train_config("configs/train_csr_dmri_s_m1_multivendor.yaml",
                            {"optim": {"batch_size": 9}, "run": {"threads": 1}})
    model = create_model(cfg.model.name, **cfg.model.args)
    task = build_task(cfg, model)
    names = [s.name for s in task.subjects]
    assert len(names) == 9 and "siemens-prisma-3t-decubitus" in names
    shells = {n: sorted({float(b) for b in s.bvals}) for n, s in zip(names, task.subjects)}
    assert shells["dwi-siemens-3t"] == [0.0, 2500.0]          # 0: the mean b=0 volume
    assert shells["canon-galan-3t"] == [0.0, 1500.0]
    trio = task.subjects[names.index("siemens-trio-3t")]
    assert trio.shell.shape[3] == 41                            # 40 directions + the b=0
    thick = task.subjects[names.index("siemens-prisma-3t-decubitus")]
    assert thick.shape[2] == 40                                 # 25 slices padded to 40
    seen = set()
    for step in range(8):
        batch = task.batch(step)
        assert torch.isfinite(batch["lr"]).all() and torch.isfinite(batch["hr"]).all()
        seen |= {names[i] for i, *_ in task._plan(step)[1]}
    assert len(seen) >= 7


def test_series_default_without_t1w_follows_the_shipped_weights(tmp_path, monkeypatch):
    from mrisr.inference import upscale as up
    from mrisr.models import registry

    from mrisr.inference import selection

    shipped = {}
    monkeypatch.setattr(registry, "weights_path",
                        lambda name: shipped.get(name, tmp_path / "absent.pt"))
    monkeypatch.setattr(selection, "DMRI_MODELS_ABOVE_CUBIC",
                        (up.DEFAULT_DMRI_MODEL, up.DEFAULT_DMRI_MODEL_NO_T1))
    assert up.default_model_name(False, series=True) == "cubic"
    (tmp_path / "m1.pt").write_bytes(b"")
    shipped[up.DEFAULT_DMRI_MODEL_NO_T1] = tmp_path / "m1.pt"
    assert up.default_model_name(False, series=True) == up.DEFAULT_DMRI_MODEL_NO_T1
    # The T1w default, trained without dropout, does not serve series without a T1w ...
    (tmp_path / "csr.pt").write_bytes(b"")
    (tmp_path / "csr.yaml").write_text("dmri: {t1_dropout: 0.0}\n")
    shipped[up.DEFAULT_DMRI_MODEL] = tmp_path / "csr.pt"
    assert up.default_model_name(False, series=True) == up.DEFAULT_DMRI_MODEL_NO_T1
    # ... trained with it, it serves both.
    (tmp_path / "csr.yaml").write_text("dmri: {t1_dropout: 0.3}\n")
    assert up.default_model_name(False, series=True) == up.DEFAULT_DMRI_MODEL
    assert up.default_model_name(True, series=True) == up.DEFAULT_DMRI_MODEL
    assert up.default_model_name(False) == selection.DEFAULT_MODEL_NO_REF_FALLBACK  # "absent"


def test_a_method_run_with_and_without_the_t1w_gets_one_table_row_each():
    """A T1w-dropout model scored on series with and without a T1w: two rows over different
    series, each named for its group (one repeated label hid which was which)."""
    from types import SimpleNamespace

    from mrisr.evaluation.dmri import _row_labels

    rows = [{"method": m, "reference": r} for m, r in
            [("Cubic", "-"), ("fold", "t1"), ("fold", "-"), ("plain", "-"), ("fold", "t1")]]
    labels = _row_labels(SimpleNamespace(case_rows=rows))
    assert labels == {("Cubic", "-"): "Cubic", ("fold", "t1"): "fold (series with a T1w)",
                      ("fold", "-"): "fold (series without one)", ("plain", "-"): "plain"}
