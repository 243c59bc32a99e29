"""``spline_refiner`` (the 4D default ``dwi_refiner_s``): separable cubic B-spline resampling,
the residual CNN on the output grid, slab decoding, training and ``mrisr upscale`` of a series."""
import json

import numpy as np
import pytest
import torch

from mrisr.data.phantom import make_dwi_phantom
from mrisr.degradation import degrade_volume, spline_resize
from mrisr.errors import InputError
from mrisr.inference import upscale as up
from mrisr.inference.volume3d import VolumeUpscaler
from mrisr.io import save_nifti, write_bvals, write_bvecs
from mrisr.models import create_model, load_checkpoint, save_checkpoint
from mrisr.models.query import bspline_resize
from mrisr.training import train

from test_dmri import dmri_config

REFINER = {"width": 6, "depth": 3}


def refiner(perturb: bool = False, **args):
    torch.manual_seed(0)
    model = create_model("spline_refiner", **{**REFINER, **args}).eval()
    if perturb:  # a trained model's last layer is not zero
        for p in model.body[-1].parameters():
            torch.nn.init.normal_(p, std=0.2)
    return model


@pytest.mark.parametrize("out_shape", [(34, 46, 22), (41, 9, 26), (8, 12, 5)])
def test_bspline_resize_is_scipys_cubic_spline_zoom(out_shape):
    x = np.random.default_rng(0).random((17, 23, 11))
    ours = bspline_resize(torch.from_numpy(x)[None, None], out_shape)[0, 0].numpy()
    np.testing.assert_allclose(ours, spline_resize(x, out_shape, order=3), atol=1e-10)


def test_an_untrained_refiner_is_cubic_interpolation():
    x = np.random.default_rng(1).random((9, 11, 7)).astype(np.float32) + 0.5
    out = VolumeUpscaler(refiner(), torch.device("cpu"), precision="fp32")(x, (18, 25, 14))
    np.testing.assert_allclose(out, spline_resize(x, (18, 25, 14), order=3), rtol=1e-5,
                               atol=1e-6)


def test_slab_decoding_equals_the_whole_grid_and_reports_every_plane():
    model = refiner(perturb=True)
    lr = torch.rand(1, 1, 10, 9, 8)
    with torch.no_grad():
        whole = model(lr, None, (30, 20, 17))
        model.slab_voxels = 20 * 17 * 4  # slabs of 4 planes, a halo of 3
        planes = []
        slabs = model.decode_grid(model.encode(lr), (30, 20, 17), progress=planes.append)
    assert sum(planes) == 30 and len(planes) == 8
    torch.testing.assert_close(slabs, whole, rtol=1e-5, atol=1e-6)
    # The per-axis scale is an input: another upscaling of the same LR volume is not a crop.
    assert not torch.allclose(whole[:, :, :15], model(lr, None, (15, 20, 17)))


def test_the_refiner_decodes_grids_not_points():
    model = refiner()
    with pytest.raises(InputError, match="whole output grids"):
        model.decode(model.encode(torch.rand(1, 1, 4, 4, 4)), object())
    with pytest.raises(ValueError, match="depth must be >= 2"):
        create_model("spline_refiner", depth=1)


def test_the_refiner_trains_on_the_phantom_and_its_checkpoint_loads(tmp_path):
    cfg = dmri_config(tmp_path, model={"name": "spline_refiner", "args": REFINER},
                      frequency_weight=0.0)
    cfg.curriculum[0].steps = 12
    cfg.optim.lr = 3e-3
    final = train(cfg, show_progress=False)
    loaded = load_checkpoint(final)  # weights_only=True inside
    assert loaded.payload["model"]["architecture"] == "spline_refiner"
    assert loaded.model.grid_output and loaded.model.level_norm
    # It learnt something: the last layer is no longer the zero of cubic interpolation.
    assert float(loaded.model.body[-1].weight.abs().sum()) > 0
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(rows) == 13


def test_a_series_upscaled_with_the_refiner_is_cubic_plus_its_correction(tmp_path):
    ph = make_dwi_phantom(shape=(24, 28, 20), voxel_size=(2.5, 2.5, 2.5), n_directions=6)
    lr, lr_affine = degrade_volume(ph.dwi * 1000.0, ph.affine, 2, kind="bicubic")
    save_nifti(lr, lr_affine, tmp_path / "dwi.nii.gz")
    write_bvals(tmp_path / "dwi.bval", ph.bvals)
    write_bvecs(tmp_path / "dwi.bvec", ph.bvecs)
    model = refiner()
    model.preset = "dwi_refiner_s"
    save_checkpoint(tmp_path / "refiner.pt", model)
    img = up.upscale_file(tmp_path / "dwi.nii.gz", tmp_path / "sr.nii.gz", None, scale=2,
                          model=str(tmp_path / "refiner.pt"), device="cpu")
    sr = np.asarray(img.dataobj)
    info = json.loads((tmp_path / "sr.json").read_text())
    assert info["architecture"]["architecture"] == "spline_refiner"
    # Untrained, the refiner adds nothing: the series is its cubic interpolation (>= 0).
    for v in (0, 4):
        cubic = np.maximum(spline_resize(lr[..., v], (24, 28, 20), order=3), 0)
        np.testing.assert_allclose(sr[..., v], cubic, rtol=1e-4, atol=1e-2)


def test_a_leaky_refiner_keeps_a_gradient_below_zero_and_starts_as_cubic():
    model = refiner(negative_slope=0.1)
    assert isinstance(model.body[1], torch.nn.LeakyReLU)
    assert isinstance(refiner().body[1], torch.nn.ReLU)  # checkpoints without the argument
    lr = torch.rand(1, 1, 6, 7, 5)
    with torch.no_grad():
        out = model(lr, None, (12, 14, 10))
    np.testing.assert_allclose(out[0, 0].numpy(), spline_resize(lr[0, 0].numpy(), (12, 14, 10)),
                               rtol=1e-5, atol=1e-6)


def test_the_refiner_configs_parse():
    from pathlib import Path

    from mrisr.config import from_dict, load_yaml
    from mrisr.evaluation.dmri import DmriEvaluateConfig
    from mrisr.training import load_train_config

    configs = Path(__file__).resolve().parents[1] / "configs"
    folds = load_train_config(configs / "train_dwi_refiner_heldout.yaml")
    clean = load_train_config(configs / "train_dwi_refiner_heldout_clean.yaml")
    everything = load_train_config(configs / "train_dwi_refiner_s.yaml")
    assert folds.model.name == clean.model.name == everything.model.name == "dwi_refiner_s"
    assert clean.model.args == {"negative_slope": 0.1} and not folds.model.args
    assert clean.dmri.noise_fraction == 0 and folds.dmri.noise_fraction == 0.3
    assert everything.dmri.holdout is None and everything.total_steps == folds.total_steps
    assert folds.loss.pixel_norm == "l2" and folds.dmri.frequency_weight == 0
    for fold in ("A", "B"):
        for name in (f"refiner_{fold}_full", f"refiner_clean_{fold}_fa"):
            cfg = from_dict(DmriEvaluateConfig, load_yaml(configs / f"eval_dmri_{name}.yaml"))
            assert cfg.methods[0].name == "cubic" and len(cfg.dmri.holdout.split(",")) == 3
