"""bf16 arithmetic (``--precision``) and jobs whose output is coarser than the input along some
axes (the clinical 0.47 x 0.47 x 5 mm -> 0.94 x 0.94 x 1 mm request)."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mrisr.cli.main import main
from mrisr.data.phantom import make_brain_phantom, make_dwi_phantom
from mrisr.degradation import degrade_volume
from mrisr.errors import InputError
from mrisr.evaluation.metrics import psnr
from mrisr.inference.coarsen import coarser_axes, reduce_to_output
from mrisr.inference.upscale import upscale
from mrisr.io.nifti import Volume
from mrisr.precision import autocast, cpu_has_fast_bf16, fast_bf16, resolve_precision
from mrisr.training import load_train_config, train
from mrisr.training.trainer import Trainer

CPU = torch.device("cpu")


@pytest.fixture
def no_bf16_units(monkeypatch):
    monkeypatch.setenv("MRISR_CPU_BF16", "0")


@pytest.fixture
def bf16_units(monkeypatch):
    monkeypatch.setenv("MRISR_CPU_BF16", "1")


def test_auto_follows_the_cpu_capability(no_bf16_units, monkeypatch):
    assert not cpu_has_fast_bf16() and not fast_bf16(CPU)
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"  # asked for explicitly: honoured
    monkeypatch.setenv("MRISR_CPU_BF16", "1")
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(InputError, match="unknown precision"):
        resolve_precision("fp16", CPU)


def test_cpu_flags_decide_without_override(monkeypatch):
    import mrisr.precision as precision

    monkeypatch.delenv("MRISR_CPU_BF16", raising=False)
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert not precision.cpu_has_fast_bf16()
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert precision.cpu_has_fast_bf16()
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert precision.cpu_has_fast_bf16()


def test_autocast_is_bf16_or_nothing():
    x = torch.randn(4, 8)
    w = torch.randn(8, 3)
    with autocast(CPU, "bf16"):
        assert (x @ w).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert (x @ w).dtype == torch.float32


@pytest.fixture(scope="module")
def phantom():
    return make_brain_phantom(shape=(64, 72, 12), voxel_size=(2.0, 2.0, 2.0), noise=0.0)


def _in_brain(p, data):
    return psnr(data[p.brain_mask], p.t2w[p.brain_mask], data_range=1.0)


@pytest.mark.parametrize("model, with_reference", [("dualarbnet_s", True), ("liif_s", False)])
def test_bf16_upscale_matches_fp32_on_the_phantom(phantom, model, with_reference):
    lr, affine = degrade_volume(phantom.t2w, phantom.affine, (2, 2, 1), "kspace")
    ref = Volume(phantom.t1w, phantom.affine) if with_reference else None
    out = {}
    for precision in ("fp32", "bf16"):
        result = upscale(Volume(lr, affine), ref, shape=phantom.t2w.shape, model=model,
                         precision=precision, register="off", device="cpu")
        assert result.info["precision"] == precision
        out[precision] = result.data
    # The two agree closely voxel by voxel, and in PSNR within a few hundredths of a dB.
    diff = np.abs(out["bf16"] - out["fp32"]).max()
    assert 0 < diff < 0.02
    assert abs(_in_brain(phantom, out["bf16"]) - _in_brain(phantom, out["fp32"])) < 0.05


def test_bf16_3d_model_matches_fp32():
    from mrisr.inference.selection import load_upscale_model
    from mrisr.inference.volume3d import VolumeUpscaler

    p = make_dwi_phantom(shape=(20, 22, 16), n_directions=2, noise=0.0)
    net, _ = load_upscale_model("csr_dmri_s", True, True)
    lr = degrade_volume(p.dwi[..., -1], p.affine, 2, "bicubic")[0]
    outs = [VolumeUpscaler(net, CPU, precision=prec)(lr, p.dwi.shape[:3], p.t1w)
            for prec in ("fp32", "bf16")]
    assert outs[0].dtype == outs[1].dtype == np.float32
    scale = np.abs(outs[0]).max()
    assert 0 < np.abs(outs[1] - outs[0]).max() < 0.02 * scale


def test_cli_records_precision_and_fallback(tmp_path, phantom, no_bf16_units):
    lr, affine = degrade_volume(phantom.t2w, phantom.affine, (2, 2, 1), "kspace")
    nib.save(nib.Nifti1Image(lr, affine), tmp_path / "lr.nii.gz")
    assert main(["upscale", str(tmp_path / "lr.nii.gz"), "--scale", "2,2,1", "-q",
                 "--model", "liif_s", "-o", str(tmp_path / "sr.nii.gz")]) == 0
    assert json.loads((tmp_path / "sr.json").read_text())["precision"] == "fp32"
    assert main(["upscale", str(tmp_path / "lr.nii.gz"), "--scale", "2,2,1", "-q",
                 "--model", "liif_s", "--precision", "bf16",
                 "-o", str(tmp_path / "sr16.nii.gz")]) == 0
    assert json.loads((tmp_path / "sr16.json").read_text())["precision"] == "bf16"


TRAIN = """
model: {{name: dualarbnet_s}}
data:
  dataset: {{kind: phantom, shape: [48, 48, 8], voxel_size: [2, 2, 4]}}
  patch: 12
curriculum:
  - {{name: full, steps: {steps}, reference: {{hr: 1.0}}}}
optim: {{batch_size: 2, lr: 0.001}}
run: {{checkpoint_every: 2, log_every: 1, seed: 1, threads: 1, precision: {precision}}}
output: {output}
"""


def test_training_in_bf16_records_it_and_resumes_in_pieces(tmp_path, bf16_units):
    """A run stopped by its per-invocation budget keeps last.pt (no final.pt) and continues
    where it stopped, with one continuous log."""
    path = tmp_path / "run.yaml"
    path.write_text(TRAIN.format(steps=4, precision="auto", output=tmp_path / "run"))
    cfg = load_train_config(path)
    cfg.run.session_minutes = 1e-6  # stops after the first step
    assert train(cfg, show_progress=False) is None
    first = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert first["step"] == 1 and first["trainer"]["precision"] == "bf16"
    assert not (tmp_path / "run" / "final.pt").exists()
    cfg = load_train_config(path)
    final = train(cfg, resume="auto", show_progress=False)
    assert final is not None and final.exists()
    steps = [line.split(",")[0] for line in (tmp_path / "run" / "log.csv").read_text()
             .splitlines()[1:]]
    assert steps == ["1", "2", "3", "4"]


def test_training_step_in_bf16_runs_the_paper_preset_and_stays_close(tmp_path):
    """dualarbnet_ref (reference encoded without gradients) trains under bf16 autocast, and a
    step's loss is close to fp32's."""
    from mrisr.models import create_model
    from mrisr.training import build_task

    losses = {}
    for precision in ("fp32", "bf16"):
        path = tmp_path / f"{precision}.yaml"
        path.write_text(TRAIN.format(steps=1, precision=precision,
                                     output=tmp_path / precision)
                        .replace("dualarbnet_s", "dualarbnet_ref"))
        cfg = load_train_config(path)
        torch.manual_seed(0)
        model = create_model("dualarbnet_ref")
        task = build_task(cfg, model)
        trainer = Trainer(cfg, task, model, CPU)
        assert trainer.precision == precision
        batch = task.batch(0, 0, 1)
        losses[precision] = trainer.train_step(batch)[0]
    assert abs(losses["bf16"] - losses["fp32"]) < 0.05 * losses["fp32"]


def test_coarser_axes_are_reduced_before_the_model():
    p = make_brain_phantom(shape=(48, 40, 6), voxel_size=(0.5, 0.5, 5.0), noise=0.0)
    vol = Volume(p.t2w, p.affine)
    assert coarser_axes(vol.spatial_shape, (24, 20, 30)) == [0, 1]
    reduced, entry = reduce_to_output(vol, (24, 20, 30))
    assert reduced.data.shape == (24, 20, 6) and entry["axes"] == [0, 1]
    np.testing.assert_allclose(reduced.zooms, [1.0, 1.0, 5.0], rtol=1e-6)
    # Same field of view: the centres of the first voxels move by half the size change.
    np.testing.assert_allclose(reduced.affine[:3, 3] - p.affine[:3, 3], [0.25, 0.25, 0.0],
                               atol=1e-6)
    # What an acquisition at 1 mm would see: close to the 2 x 2 averages of the 0.5 mm voxels.
    pooled = p.t2w.reshape(24, 2, 20, 2, 6).mean(axis=(1, 3))
    assert np.corrcoef(reduced.data.ravel(), pooled.ravel())[0, 1] > 0.97
    assert abs(reduced.data.mean() - pooled.mean()) < 0.1 * pooled.mean()
    assert reduce_to_output(vol, (48, 40, 30)) == (vol, None)


def test_fine_in_plane_thick_slices_to_coarser_in_plane_finer_through_plane(tmp_path):
    """The clinical request shape: 0.47 x 0.47 x 5 mm asked for 0.94 x 0.94 x 1 mm with a 2.5 mm
    reference runs with the defaults, on as many slices as the output has, and writes a
    volume close to the truth at the output's resolution."""
    truth = make_brain_phantom(shape=(48, 48, 30), voxel_size=(0.94, 0.94, 1.0), noise=0.0)
    fine = make_brain_phantom(shape=(96, 96, 30), voxel_size=(0.47, 0.47, 1.0), noise=0.0)
    thick, thick_affine = degrade_volume(fine.t2w, fine.affine, (1, 1, 5), "thick_slice")
    ref = make_brain_phantom(shape=(18, 18, 12), voxel_size=(2.5, 2.5, 2.5), noise=0.0)
    nib.save(nib.Nifti1Image(thick, thick_affine), tmp_path / "t2.nii.gz")
    nib.save(nib.Nifti1Image(ref.t1w, ref.affine), tmp_path / "t1.nii.gz")
    steps = []
    import mrisr.inference.upscale as up
    original = up.SliceUpscaler.upscale

    def counting(self, target, out_shape, slice_axis, *args, **kwargs):
        steps.append(target.shape[slice_axis])
        return original(self, target, out_shape, slice_axis, *args, **kwargs)
    up.SliceUpscaler.upscale = counting
    try:
        assert main(["upscale", str(tmp_path / "t2.nii.gz"), "--ref", str(tmp_path / "t1.nii.gz"),
                     "--voxel-size", "0.94,0.94,1.0", "-q",
                     "-o", str(tmp_path / "sr.nii.gz")]) == 0
    finally:
        up.SliceUpscaler.upscale = original
    assert steps == [48]  # the slices of the reduced grid, not the 96 fine ones
    out = nib.load(tmp_path / "sr.nii.gz")
    assert out.shape == (48, 48, 30)
    np.testing.assert_allclose(nib.affines.voxel_sizes(out.affine), [0.94, 0.94, 1.0], rtol=1e-5)
    side = json.loads((tmp_path / "sr.json").read_text())
    assert side["input_reduced"]["axes"] == [0, 1]
    # A thick-slice job with a reference adapts by default, judged on held-out planes.
    from mrisr.training.adapt import THICK_ADAPT_STEPS
    adaptation = side["decisions"]["adaptation"]
    assert adaptation["choice"] in ("adapted", "unadapted") and "thick slices" in \
        adaptation["reason"]
    assert adaptation["evidence"]["steps_requested"] == THICK_ADAPT_STEPS
    mask = truth.brain_mask
    cubic = upscale(Volume(thick, thick_affine), shape=(48, 48, 30), model="cubic").data
    default = psnr(out.get_fdata()[mask], truth.t2w[mask], data_range=1.0)
    # Measured 16.50 dB against cubic's 15.63 (the phantom is small: mostly edges).
    assert default > psnr(cubic[mask], truth.t2w[mask], data_range=1.0) + 0.4


def test_resuming_with_another_recipe_is_refused_in_one_line(tmp_path):
    """A piece continued without the options the run started with (e.g. its --set of the
    held-out scanners) would silently train another model: refused, naming the setting."""
    from mrisr.errors import InputError as Refused

    path = tmp_path / "run.yaml"
    path.write_text(TRAIN.format(steps=3, precision="fp32", output=tmp_path / "run"))
    cfg = load_train_config(path)
    cfg.run.session_minutes = 1e-6
    assert train(cfg, show_progress=False) is None
    changed = load_train_config(path, {"optim": {"lr": 0.01}})
    with pytest.raises(Refused, match=r"optim\.lr=0\.001.*0\.01"):
        train(changed, resume="auto", show_progress=False)
    faster = load_train_config(path, {"run": {"threads": 2, "session_minutes": 5}})
    assert train(faster, resume="auto", show_progress=False).exists()  # run.* may change
