"""3D diffusion SR (CSR-dMRI family): data pipeline, models, training task, tensor fidelity."""
import itertools

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.transform import Rotation

from mrisr.config import from_dict
from mrisr.data.dwi import (attenuation_level, b0_indices, brain_mask, denormalise,
                            load_dwi_subject, normalise_by_b0, phantom_dwi_subject,
                            place_t1_on_dwi_grid, scale_t1, select_shell, simulate_shells)
from mrisr.data.intensity import robust_max
from mrisr.data.phantom import make_brain_phantom, make_dwi_phantom
from mrisr.degradation import degrade, spline_resize
from mrisr.errors import ConfigError, InputError
from mrisr.evaluation.diffusion import evaluate_dwi_volume, fit_tensors, tensor_fidelity
from mrisr.grid import make_coord
from mrisr.io.nifti import Volume
from mrisr.models import create_model, load_checkpoint
from mrisr.models.csr_dmri import ArSSRDecoder, grid_point_query
from mrisr.models.query import (bspline_coefficients, grid_positions, sample_bspline,
                                sample_points)
from mrisr.resample import resample_to_grid
from mrisr.training import build_task, train
from mrisr.data.tensor_design import tensor_design
from mrisr.training.losses import angular_loss, tensor_loss
from mrisr.training.config import TrainConfig

from conftest import shared_dataset

SHAPE, VOXEL = (32, 36, 28), 3.0
TINY_3D = {"G0": 8, "D": 1, "C": 2, "G": 8, "feature_channels": 8, "hidden": 16}


@pytest.fixture(scope="module")
def phantom():
    return make_dwi_phantom(SHAPE, (VOXEL,) * 3, n_directions=12)


def corr(a, b, mask):
    return float(np.corrcoef(a[mask], b[mask])[0, 1])


def dmri_config(tmp_path=None, model=None, batch_size=2, **dmri) -> TrainConfig:
    base = {"task": "dmri3d",
            "model": model or {"name": "csr_dmri", "args": TINY_3D},
            "dmri": {"phantom_shape": [28, 32, 28], "phantom_voxel_size": [4, 4, 4],
                     "lr_patch": 5, "scale_range": [2, 3], **dmri},
            "curriculum": [{"name": "train", "steps": 3}],
            "optim": {"batch_size": batch_size, "lr": 1e-3},
            "run": {"seed": 1, "threads": 1, "log_every": 1, "checkpoint_every": 100}}
    if tmp_path is not None:
        base["output"] = str(tmp_path / "run")
    return from_dict(TrainConfig, base)


def tiny_task(**dmri):
    cfg = dmri_config(**dmri)
    torch.manual_seed(0)
    model = create_model(cfg.model.name, **cfg.model.args)
    return build_task(cfg, model), model


# -- data pipeline -------------------------------------------------------------------------

def test_shell_selection_tolerance_and_missing_shell():
    bvals = np.array([0, 5, 995, 1005, 1000, 2000, 60])
    assert b0_indices(bvals).tolist() == [0, 1]
    assert select_shell(bvals).tolist() == [2, 3, 4]
    assert select_shell(bvals, 1000, tolerance=4).tolist() == [4]
    assert select_shell(bvals, 2000).tolist() == [5]
    assert select_shell(bvals, 0, tolerance=100).tolist() == [6]  # b=0 volumes never count
    with pytest.raises(InputError, match=r"no b=1000 shell .*present: 0, 2500$"):
        select_shell(np.array([0.0, 2500, 2495, 5]))
    with pytest.raises(InputError, match="no b=0 volume"):
        normalise_by_b0(np.ones((2, 2, 2, 2)), np.array([1000.0, 1000.0]))


def test_b0_normalisation_gives_the_attenuation_and_round_trips(phantom):
    # Two b=0 volumes of different intensity: the divisor is their mean.
    dwi = np.concatenate([0.9 * phantom.dwi[..., :1], phantom.dwi], axis=-1)
    bvals = np.concatenate([[0.0], phantom.bvals])
    norm, mean_b0 = normalise_by_b0(dwi, bvals)
    np.testing.assert_allclose(mean_b0, 0.95 * phantom.dwi[..., 0], rtol=1e-5, atol=1e-7)
    assert norm.shape == SHAPE + (12,) and np.isfinite(norm).all()
    kept = norm.any(axis=-1)
    assert kept[phantom.brain_mask].all() and not norm[mean_b0 == 0].any()
    # Noise-free phantom: S_b / S_0 = exp(-b g^T D g) / 0.95 exactly in every kept voxel.
    g = phantom.bvecs[:, 1:]
    adc = np.einsum("in,xyzij,jn->xyzn", g, phantom.tensors.astype(np.float64), g)
    np.testing.assert_allclose(norm[kept], np.exp(-1000.0 * adc[kept]) / 0.95, rtol=1e-4)
    back = denormalise(norm, mean_b0)
    np.testing.assert_allclose(back[kept], dwi[..., 2:][kept], rtol=1e-5, atol=1e-7)
    masked, _ = normalise_by_b0(dwi, bvals, mask=phantom.brain_mask, clip=0.5)
    assert not masked[~phantom.brain_mask].any() and masked.max() <= 0.5


def test_attenuation_level_is_equivariant_and_survives_downsampling(phantom):
    subject = phantom_dwi_subject(phantom)
    volume = subject.shell[..., 0]
    level = attenuation_level(volume)
    assert 0.2 < level < 0.8
    assert attenuation_level(2.5 * volume) == pytest.approx(2.5 * level, rel=1e-5)
    # What inference computes from the LR volume is close to what training took from the HR
    # one (the phantom is small: at x3 a tenth of its LR brain voxels touch the border).
    for scale, tolerance in ((2.0, 0.02), (3.0, 0.08)):
        lr = degrade(volume[None], scale, kind="bicubic", n_spatial=3)[0]
        assert attenuation_level(lr) == pytest.approx(level, rel=tolerance)
    assert attenuation_level(np.zeros((4, 4, 4))) == 1.0


def test_simulated_shells_follow_the_tensor_fit_and_keep_the_noise():
    pytest.importorskip("dipy.reconst.dti")
    clean = phantom_dwi_subject(make_dwi_phantom(SHAPE, (VOXEL,) * 3, n_directions=12))
    noisy = phantom_dwi_subject(make_dwi_phantom(SHAPE, (VOXEL,) * 3, n_directions=12,
                                                 noise=0.03))
    mask = clean.mask
    out = simulate_shells(clean, [1000, 2500], 3, seed=0)
    assert out.shell.shape == clean.shape + (12 + 6,)
    np.testing.assert_array_equal(out.shell[..., :12], clean.shell)
    np.testing.assert_allclose(out.bvals[12:], [1000] * 3 + [2500] * 3)
    np.testing.assert_allclose(np.linalg.norm(out.bvecs[:, 12:], axis=0), 1.0, rtol=1e-6)
    assert not out.shell[~mask, 12:].any()
    # Noise-free, the simulated b=1000 volumes are as plausible as measured ones: the level of
    # a measured direction, and a b=2500 shell well below it.
    b1000 = [attenuation_level(out.shell[..., i]) for i in range(12, 15)]
    b2500 = [attenuation_level(out.shell[..., i]) for i in range(15, 18)]
    measured = attenuation_level(clean.shell[..., 0])
    assert all(abs(v - measured) < 0.15 * measured for v in b1000)
    assert max(b2500) < 0.75 * min(b1000)
    # With measurement noise, the simulated volumes carry it (in attenuation units).
    rough = simulate_shells(noisy, [2500], 2, seed=0)

    def roughness(volume):
        inner = ndimage.binary_erosion(mask, iterations=2)
        return float(np.std(np.diff(volume, axis=0)[inner[1:] & inner[:-1]]))
    assert roughness(rough.shell[..., 12]) > 2 * roughness(out.shell[..., 15])
    with pytest.raises(ConfigError, match="simulate_bvalues"):
        dmri_config(simulate_bvalues=[0])


def test_t1_is_scaled_by_its_brain_median_whatever_the_scalp(phantom):
    mask = phantom.brain_mask
    t1 = phantom.t1w.astype(np.float32)
    scaled = scale_t1(t1, mask)
    assert np.median(scaled[mask & (t1 > 0)]) == pytest.approx(1.0, rel=1e-4)
    # Bright fat outside the brain mask does not change the scaling.
    fat = np.where(mask, t1, 50.0 * t1.max())
    np.testing.assert_allclose(scale_t1(fat, mask)[mask], scaled[mask], rtol=1e-6)


def test_brain_mask_from_the_mean_b0(phantom):
    b0 = phantom.dwi[..., 0]
    for method in ("threshold", "median_otsu"):
        if method == "median_otsu":
            pytest.importorskip("dipy.segment.mask")
        mask = brain_mask(b0, method)
        dice = 2 * (mask & phantom.brain_mask).sum() / (mask.sum() + phantom.brain_mask.sum())
        assert dice > 0.9, method
    with pytest.raises(InputError, match="unknown brain mask method"):
        brain_mask(b0, "bet")


def _oblique_t1(phantom, shift=(0.0, 0.0, 0.0)):
    """The phantom's T1w at half the DWI voxel size on a rotated, shifted grid (header shifted
    by ``shift`` mm more than the data)."""
    fine = make_brain_phantom(tuple(2 * n for n in SHAPE), (VOXEL / 2,) * 3, noise=0.0)
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [8, -5, 12], degrees=True).as_matrix() * \
        (VOXEL / 2)
    shape = (72, 80, 64)
    affine[:3, 3] = np.array([2.0, -3.0, 1.5]) - affine[:3, :3] @ ((np.array(shape) - 1) / 2)
    data, _ = resample_to_grid(fine.t1w, fine.affine, affine, shape)
    affine[:3, 3] += shift
    return Volume(data, affine)


def test_t1_is_placed_on_the_dwi_grid_through_the_affines(phantom):
    t1 = _oblique_t1(phantom)
    placed = place_t1_on_dwi_grid(t1, phantom.affine, phantom.dwi.shape)
    brain = phantom.brain_mask
    assert placed.data.shape == SHAPE and placed.coverage[brain].all()
    np.testing.assert_array_equal(placed.transform, np.eye(4))
    # The phantom's own DWI-grid T1w is the truth; resizing the array while ignoring the
    # affines (rotation, shift) is far off.
    assert corr(placed.data, phantom.t1w, brain) > 0.97
    assert corr(spline_resize(t1.data, SHAPE), phantom.t1w, brain) < 0.9


def test_rigid_registration_recovers_a_header_translation(phantom):
    pytest.importorskip("dipy.align")
    shift = np.array([3.0, -2.0, 1.5])
    t1 = _oblique_t1(phantom, shift)
    _, mean_b0 = normalise_by_b0(phantom.dwi, phantom.bvals)
    assert corr(place_t1_on_dwi_grid(t1, phantom.affine, SHAPE).data, phantom.t1w,
                phantom.brain_mask) < 0.9
    placed = place_t1_on_dwi_grid(t1, phantom.affine, SHAPE, register=True, static=mean_b0)
    np.testing.assert_allclose(placed.transform[:3, 3], shift, atol=0.4)
    np.testing.assert_allclose(placed.transform[:3, :3], np.eye(3), atol=0.01)
    assert corr(placed.data, phantom.t1w, phantom.brain_mask) > 0.97
    with pytest.raises(InputError, match="static image"):
        place_t1_on_dwi_grid(t1, phantom.affine, SHAPE, register=True)


# -- models --------------------------------------------------------------------------------

@pytest.mark.parametrize("args,t1_shape", [
    ({}, "lr"), ({"decoder": "arssr"}, "lr"), ({"decoder": "baseline", "use_t1": False}, None),
    ({"use_t1": False}, None), ({"t1_mode": "own_resolution"}, "hr"),
    ({"image_residual": "bspline"}, "lr"), ({"image_residual": "linear", "use_t1": False}, None),
    ({"image_residual": "bspline", "t1_mode": "own_resolution"}, "hr"),
    ({"coordinate": "relative", "use_scale": True}, "lr"),
    ({"t1_mode": "own_resolution", "t1_encoder": {"G0": 4, "out_channels": 3}}, "hr")])
def test_family_shapes_and_chunked_grid_decode(args, t1_shape):
    torch.manual_seed(0)
    model = create_model("csr_dmri", **TINY_3D, **args).eval()
    if model.image_residual:  # its last layer starts at zero: make the decoder visible
        torch.nn.init.normal_(model.decoder.out.weight)
    lr_shape, out_shape = (5, 6, 4), (11, 13, 9)
    lr = torch.rand(2, 1, *lr_shape)
    ref = {"lr": torch.rand(2, 1, *lr_shape), "hr": torch.rand(2, 1, *out_shape),
           None: None}[t1_shape]
    own = t1_shape == "hr"
    with torch.no_grad():
        feats = model.encode(lr, ref)
        whole = model.decode_grid(feats, out_shape, chunk=10 ** 6)
        assert whole.shape == (2, 1, *out_shape)
        torch.testing.assert_close(model.decode_grid(feats, out_shape, chunk=37), whole)
        query = grid_point_query(lr_shape, out_shape, t1_shape=out_shape if own else None)
        points = model(lr, ref, query)
        assert points.shape == (2, 1, int(np.prod(out_shape)))
        torch.testing.assert_close(points.reshape(whole.shape), whole)
        moved = model.decode(feats, type(query)(query.points, -query.coords, query.t1_points,
                                                 query.scales))
    # The implicit decoders read the absolute output coordinate; the no-INR baseline and the
    # relative coordinate do not.
    assert torch.equal(moved, points) == (args.get("decoder") == "baseline" or
                                          args.get("coordinate") == "relative")
    if model.use_t1:
        with pytest.raises(ValueError, match="needs a T1w"):
            model(lr, None, out_shape)


def test_grid_point_query_follows_the_grid_convention():
    lr_shape, out_shape = (5, 6, 4), (11, 13, 9)
    query = grid_point_query(lr_shape, out_shape, t1_shape=(22, 26, 18), dtype=torch.float64)
    axes = [grid_positions(n, m) for n, m in zip(lr_shape, out_shape)]
    expected = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, 3)
    torch.testing.assert_close(query.points, expected)
    torch.testing.assert_close(query.coords[0], make_coord(out_shape, torch.float64,
                                                          flatten=True))
    torch.testing.assert_close(query.t1_points[0, :, 0].unique(),
                               grid_positions(22, 11))
    part = grid_point_query(lr_shape, out_shape, 100, 140, dtype=torch.float64)
    torch.testing.assert_close(part.points, expected[:, 100:140])


def test_family_architectures_follow_the_papers():
    csr = create_model("csr_dmri_paper")
    assert csr.encoder.sfe1.in_channels == 2 and csr.encoder.out_channels == 128
    assert len(csr.decoder.layers) == 8 and csr.decoder.skip_at == 4
    assert csr.decoder.layers[0].in_features == 131 and csr.decoder.out.out_features == 1
    assert create_model("csr_dmri_s_m1").encoder.sfe1.in_channels == 1
    arssr = create_model("arssr_paper")
    assert not arssr.use_t1 and isinstance(arssr.decoder, ArSSRDecoder)
    # ArSSR's published decoder has 0.36 M parameters (docs/REFERENCE_NOTES.md).
    assert sum(p.numel() for p in arssr.decoder.parameters()) == 364676
    assert create_model("csr_dmri_s_own").t1_encoder is not None
    assert create_model("csr_dmri_s_baseline").use_coord is False


@pytest.mark.parametrize("shape,out_shape", [((7, 9, 5), (15, 20, 12)), ((6, 8), (13, 19)),
                                             ((1, 12, 9), (2, 25, 20))])
def test_bspline_sampling_equals_scipy_cubic_spline_zoom(shape, out_shape):
    x = np.random.default_rng(0).random(shape)
    axes = [grid_positions(n, m) for n, m in zip(shape, out_shape)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, len(shape))
    coef = bspline_coefficients(torch.from_numpy(x)[None, None].expand(2, 3, *shape))
    got = sample_bspline(coef, grid)
    assert got.shape == (2, int(np.prod(out_shape)), 3)
    np.testing.assert_allclose(got[1, :, 2].reshape(out_shape).numpy(),
                               spline_resize(x, out_shape, 3), atol=1e-5)
    # At the voxel centres the spline returns the voxel values.
    centres = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape],
                                         indexing="ij"), -1).reshape(1, -1, len(shape))
    np.testing.assert_allclose(sample_bspline(coef, centres)[0, :, 0].numpy(), x.ravel(),
                               atol=1e-10)


@pytest.mark.parametrize("mode,order", [("bspline", 3), ("linear", 1)])
def test_image_residual_adds_the_interpolated_lr_image(mode, order):
    torch.manual_seed(0)
    model = create_model("csr_dmri", **TINY_3D, use_t1=False, image_residual=mode).eval()
    torch.nn.init.zeros_(model.decoder.out.weight)
    torch.nn.init.zeros_(model.decoder.out.bias)
    lr = torch.rand(1, 1, 6, 7, 5, dtype=torch.float64)
    with torch.no_grad():
        out = model.double()(lr, None, (13, 15, 11))[0, 0].numpy()
    np.testing.assert_allclose(out, spline_resize(lr[0, 0].numpy(), (13, 15, 11), order),
                               atol=1e-5)
    with pytest.raises(ValueError, match="image_residual"):
        create_model("csr_dmri", **TINY_3D, image_residual="cubic")


def test_an_untrained_residual_model_is_the_bspline_interpolation():
    model = create_model("csr_dmri_s", G0=8, D=1, C=2, G=8).double().eval()
    lr = torch.rand(1, 1, 6, 7, 5, dtype=torch.float64)
    with torch.no_grad():
        out = model(lr, torch.rand_like(lr), (13, 15, 11))[0, 0].numpy()
    np.testing.assert_allclose(out, spline_resize(lr[0, 0].numpy(), (13, 15, 11), 3), atol=1e-5)


def test_relative_coordinate_and_scale_inputs():
    torch.manual_seed(0)
    model = create_model("csr_dmri", **TINY_3D, use_t1=False, coordinate="relative",
                         use_scale=True).double().eval()
    lr = torch.rand(1, 1, 5, 6, 4, dtype=torch.float64)
    query = grid_point_query((5, 6, 4), (10, 12, 8), dtype=torch.float64)
    torch.testing.assert_close(query.scales, torch.full((1, 3), 2.0, dtype=torch.float64))
    with torch.no_grad():
        feats = model.encode(lr)
        out = model.decode(feats, query)
        # Output voxel 0 of a x2 grid lies a quarter voxel before LR centre 0: offset -0.5.
        seen = []
        model.decoder.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        model.decode(feats, query)
        torch.testing.assert_close(seen[0][0, 0, :6], torch.tensor(
            [-0.5, -0.5, -0.5, 0.5, 0.5, 0.5], dtype=torch.float64))
        other = type(query)(query.points, query.coords, None, query.scales * 2)
        assert not torch.allclose(model.decode(feats, other), out)
        with pytest.raises(ValueError, match="scales is missing"):
            model.decode(feats, type(query)(query.points, query.coords))
    with pytest.raises(ValueError, match="coordinate"):
        create_model("csr_dmri", **TINY_3D, coordinate="patch")


def test_residual_enters_after_the_fourth_relu():
    torch.manual_seed(0)
    dec = create_model("csr_dmri", **{**TINY_3D, "hidden": 11}).decoder
    x = torch.rand(5, dec.layers[0].in_features)
    h = x
    for i, layer in enumerate(dec.layers, start=1):
        h = torch.relu(layer(h)) + (dec.skip(x) if i == 4 else 0)
    torch.testing.assert_close(dec(x), dec.out(h))


# -- training task -------------------------------------------------------------------------

def test_patches_are_deterministic_consistent_and_stay_out_of_the_holdout():
    task, _ = tiny_task()
    a, b = task.batch(3), task.batch(3)
    for key in ("lr", "hr", "ref", "points", "origin"):
        torch.testing.assert_close(a[key], b[key])
    half = task.batch(3, rank=1, world=2)
    torch.testing.assert_close(half["lr"], a["lr"][1::2])
    region_stop = 28 - 7  # holdout: the last quarter of axis 2
    scales = set()
    for step in range(12):
        batch = task.batch(step)
        hr, lr = batch["hr"], batch["lr"]
        hr_shape = batch["hr_shape"]
        scales.add(hr_shape)
        assert lr.shape[2:] == (5, 5, 5) and hr.shape[2:] == hr_shape
        assert all(10 <= n <= 15 for n in hr_shape) and len(set(hr_shape)) == 1
        assert 2.0 <= batch["scale"] <= 3.0
        assert (batch["origin"][:, 2] + hr_shape[2] <= region_stop).all()
        for i in range(len(hr)):
            expected = spline_resize(hr[i, 0].numpy(), (5, 5, 5), order=3)
            np.testing.assert_allclose(lr[i, 0].numpy(), expected, atol=1e-6)
            assert batch["ref"][i].shape == lr[i].shape
        # The query points put each HR voxel on the LR patch: trilinear reads of the LR patch
        # at them fit the HR patch best without a shift.
        errs = []
        for d in (-0.5, 0.0, 0.5):
            pts = (batch["points"] + torch.tensor([d, 0.0, 0.0])).expand(len(lr), -1, -1)
            up = sample_points(lr, pts).transpose(1, 2).reshape(hr.shape)
            errs.append(float((up - hr).abs().mean()))
        assert errs[1] < min(errs[0], errs[2])
    assert len(scales) > 4


def test_level_norm_divides_each_patch_by_its_volume_level():
    plain, _ = tiny_task()
    cfg = dmri_config(model={"name": "csr_dmri", "args": {**TINY_3D, "level_norm": True}})
    task = build_task(cfg, create_model(cfg.model.name, **cfg.model.args))
    subject, region = task.subjects[0], task.regions[0]
    expected = [attenuation_level(subject.shell[region + (v,)])
                for v in range(subject.shell.shape[3])]
    np.testing.assert_allclose(task.levels[0], expected)
    assert 0.2 < min(expected) and max(expected) < 0.8
    a, b = plain.batch(2), task.batch(2)
    levels = torch.from_numpy(task.levels[0][a["volume"].numpy()]).reshape(-1, 1, 1, 1, 1)
    torch.testing.assert_close(b["hr"], a["hr"] / levels)
    torch.testing.assert_close(b["ref"], a["ref"])


def test_training_samples_simulated_shells():
    pytest.importorskip("dipy.reconst.dti")
    task, model = tiny_task(simulate_bvalues=[2000, 3000], simulate_per_bvalue=2)
    assert task.subjects[0].shell.shape[3] == task.subjects[0].bvals.size
    n_measured = task.subjects[0].shell.shape[3] - 4
    assert task.describe_data()["simulated"] == {"bvalues": [2000, 3000], "per_bvalue": 2}
    volumes = {int(v) for step in range(20) for v in task.batch(step)["volume"]}
    assert any(v >= n_measured for v in volumes) and any(v < n_measured for v in volumes)
    loss, _ = task.loss(model, task.batch(0))
    assert torch.isfinite(loss)


def test_t1_gamma_bends_the_t1_patch_and_is_validated():
    plain, _ = tiny_task()
    bent, _ = tiny_task(t1_gamma=[0.5, 2.0])
    a, b = plain.batch(4), bent.batch(4)
    torch.testing.assert_close(b["hr"], a["hr"])
    assert not torch.allclose(b["ref"], a["ref"])
    # Brain tissue (about 1) keeps its scale; dark tissue moves most.
    assert float((b["ref"] - a["ref"]).abs().max()) > 0.01
    for bad in ([0.0, 1.0], [1.2, 1.1], [1.0]):
        with pytest.raises(ConfigError, match="t1_gamma"):
            dmri_config(t1_gamma=bad)


def test_t1_shift_cuts_the_t1_patch_elsewhere_and_nothing_else():
    plain, _ = tiny_task()
    moved, _ = tiny_task(t1_shift=2)
    shifted = 0
    for step in range(4):
        a, b = plain.batch(step), moved.batch(step)
        torch.testing.assert_close(b["hr"], a["hr"])
        torch.testing.assert_close(b["lr"], a["lr"])
        t1 = moved.subjects[0].t1
        region = moved.regions[0]
        n = a["hr_shape"]
        for i, origin in enumerate(a["origin"].numpy()):
            # The T1w patch is the LR degradation of a crop within 2 voxels of the DWI's.
            candidates = {}
            for d in np.ndindex(5, 5, 5):
                o = np.clip(origin + np.array(d) - 2, [r.start for r in region],
                            np.array([r.stop for r in region]) - n)
                crop = t1[tuple(slice(int(x), int(x + m)) for x, m in zip(o, n))]
                candidates[tuple(o)] = spline_resize(crop, (5, 5, 5), order=3)
            errors = {o: np.abs(c - b["ref"][i, 0].numpy()).max() for o, c in candidates.items()}
            best = min(errors, key=errors.get)
            assert errors[best] < 1e-5
            shifted += best != tuple(origin)
    assert shifted > 0
    with pytest.raises(ConfigError, match="t1_shift"):
        dmri_config(t1_shift=-1)


def test_t1_shift_fraction_leaves_the_other_samples_aligned():
    plain, _ = tiny_task()
    never, _ = tiny_task(t1_shift=2, t1_shift_fraction=0.0)
    half, _ = tiny_task(t1_shift=2, t1_shift_fraction=0.5)
    aligned = moved = 0
    for step in range(6):
        a = plain.batch(step)
        torch.testing.assert_close(never.batch(step)["ref"], a["ref"])
        b = half.batch(step)
        torch.testing.assert_close(b["hr"], a["hr"])
        for i in range(len(a["ref"])):
            same = torch.equal(b["ref"][i], a["ref"][i])
            aligned += same
            moved += not same
    assert aligned > 0 and moved > 0
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="t1_shift_fraction"):
            dmri_config(t1_shift=2, t1_shift_fraction=bad)


def test_augment_reorients_every_array_of_a_sample_alike():
    plain, _ = tiny_task(loss_region="brain")
    turned, _ = tiny_task(loss_region="brain", augment=True)
    orientations = [(flips, order) for flips in itertools.product((False, True), repeat=3)
                    for order in itertools.permutations(range(3))]

    def orient(a, flips, order):
        return np.transpose(np.flip(a, [i for i in range(3) if flips[i]]), order)
    seen = set()
    for step in range(3):
        a, b = plain.batch(step), turned.batch(step)
        for i in range(len(a["hr"])):
            hr, hr_b = a["hr"][i, 0].numpy(), b["hr"][i, 0].numpy()
            match = [o for o in orientations if np.array_equal(orient(hr, *o), hr_b)]
            assert match
            flips, order = match[0]
            assert np.array_equal(orient(a["brain"][i, 0].numpy(), flips, order),
                                  b["brain"][i, 0].numpy())
            # The LR patches are the degradations of the reoriented HR: B-spline resizing
            # commutes with flips and transposes.
            for key in ("lr", "ref"):
                np.testing.assert_allclose(orient(a[key][i, 0].numpy(), flips, order),
                                           b[key][i, 0].numpy(), atol=1e-5)
            seen.add(match[0] if len(match) == 1 else None)
    assert len(seen - {None}) > 3


def test_signal_domain_patches_are_the_signal_scaled_per_volume():
    attenuation, _ = tiny_task(loss_region="brain")
    signal, _ = tiny_task(loss_region="brain", domain="signal")
    a, s = attenuation.subjects[0], signal.subjects[0]
    region = signal.regions[0]
    brain = a.mask[region]
    for v in range(a.shell.shape[3]):
        # Per volume: the attenuation times the mean b=0, up to the volume's own factor, which
        # brings its robust maximum over the training brain to 1.
        product = (a.shell[..., v] * a.mean_b0)[region][brain]
        factor = product.max() / s.shell[..., v][region][brain].max()
        np.testing.assert_allclose(s.shell[..., v][region][brain] * factor, product, rtol=1e-5)
        assert robust_max(s.shell[..., v][region][brain]) == pytest.approx(1.0, rel=1e-5)
    # The same plan cuts the same patches; the LR patch is the degraded signal patch.
    pa, ps = attenuation.batch(0), signal.batch(0)
    assert pa["hr"].shape == ps["hr"].shape and not torch.allclose(pa["hr"], ps["hr"])
    assert torch.equal(pa["brain"], ps["brain"])
    with pytest.raises(ConfigError, match="dmri.domain"):
        dmri_config(domain="b0")


def test_per_axis_scales_and_random_queries():
    task, model = tiny_task(per_axis=True, queries=50, frequency_weight=0.0)
    shapes = [task.batch(s)["hr_shape"] for s in range(6)]
    assert any(len(set(s)) > 1 for s in shapes)
    batch = task.batch(0)
    assert batch["hr"].shape == (2, 1, 50) and batch["points"].shape == (2, 50, 3)
    loss, parts = task.loss(model, batch)
    assert torch.isfinite(loss) and "kloss" not in parts


def test_frequency_loss_enters_the_objective():
    task, model = tiny_task()
    batch = task.batch(0)
    loss, parts = task.loss(model, batch)
    assert parts["kloss"] > 0
    plain, _ = tiny_task(frequency_weight=0.0)[0].loss(model, batch)
    torch.testing.assert_close(loss - plain, torch.tensor(0.01 * parts["kloss"]), rtol=1e-4,
                               atol=1e-7)
    heavy, _ = tiny_task(frequency_weight=1.0)[0].loss(model, batch)
    assert float(heavy.detach()) > float(loss.detach())


def test_angular_loss_counts_only_errors_that_differ_between_directions():
    target = torch.rand(3, 4, 5, 6, 7) + 0.5
    # The same relative sharpening in every direction: a tensor fit sees an MD change only.
    same = target * (1 + 0.3 * torch.rand(3, 1, 5, 6, 7))
    assert float(angular_loss(same, target)) < 1e-6
    bent = target.clone()
    bent[:, 0] *= 1.2
    assert float(angular_loss(bent, target)) == pytest.approx(0.2 * 2 * 3 / 16, rel=1e-4)
    # Voxels outside the mask count in no direction; no voxel counted: 0, not NaN.
    mask = torch.zeros_like(target, dtype=torch.bool)
    mask[0] = True
    outside = bent.clone()
    outside[1:] += 5.0
    torch.testing.assert_close(angular_loss(outside, target, mask),
                               angular_loss(bent[:1], target[:1]))
    assert float(angular_loss(bent, target, torch.zeros_like(mask))) == 0.0
    with pytest.raises(ValueError, match="equal"):
        angular_loss(bent, target[:, :2])


def test_direction_groups_share_the_patch_and_enter_the_objective():
    task, model = tiny_task(direction_group=2, angular_weight=1.0)
    task.cfg.optim.batch_size = 4
    for step in range(3):
        batch = task.batch(step)
        assert batch["hr"].shape[0] == 4
        for g in (0, 2):
            # One place and orientation, two volumes: origins equal, volumes and data differ.
            assert torch.equal(batch["origin"][g], batch["origin"][g + 1])
            assert batch["volume"][g] != batch["volume"][g + 1]
            assert not torch.equal(batch["hr"][g], batch["hr"][g + 1])
        # Two ranks each build whole groups: together, the single process's batch.
        halves = [task.batch(step, rank, 2) for rank in (0, 1)]
        torch.testing.assert_close(torch.cat([h["hr"] for h in halves]), batch["hr"])
    loss, parts = task.loss(model, batch)
    assert parts["aloss"] > 0
    plain, plain_parts = tiny_task(direction_group=2)[0].loss(model, batch)
    assert "aloss" not in plain_parts
    torch.testing.assert_close(loss - plain, torch.tensor(parts["aloss"]), rtol=1e-4, atol=1e-7)
    with pytest.raises(InputError, match="direction_group 2"):
        task.batch(0, 0, 4)
    with pytest.raises(ConfigError, match="set dmri.direction_group to 2 or more"):
        dmri_config(angular_weight=0.1)
    with pytest.raises(ConfigError, match="multiple of dmri.direction_group 3"):
        dmri_config(direction_group=3)


@pytest.mark.parametrize("queries,weight", [(0, 0.01), (40, 0.0)])
def test_brain_loss_region_ignores_errors_outside_the_mask(queries, weight):
    task, model = tiny_task(loss_region="brain", queries=queries, frequency_weight=weight)
    batch = next(b for b in map(task.batch, range(20)) if not b["brain"].all())
    brain = batch["brain"]
    assert brain.dtype == torch.bool and brain.shape == batch["hr"].shape and brain.any()
    loss, _ = task.loss(model, batch)
    moved = dict(batch, hr=torch.where(brain, batch["hr"], batch["hr"] + 5.0))
    torch.testing.assert_close(task.loss(model, moved)[0], loss)
    moved = dict(batch, hr=torch.where(brain, batch["hr"] + 0.5, batch["hr"]))
    assert float(task.loss(model, moved)[0].detach()) > float(loss.detach()) + 0.01
    patch_task, _ = tiny_task(queries=queries, frequency_weight=weight)
    assert "brain" not in patch_task.batch(0)


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="task must be one of slices2d, dmri3d"):
        from_dict(TrainConfig, {"task": "dmri"})
    with pytest.raises(ConfigError, match="frequency_weight needs the whole HR patch"):
        dmri_config(queries=10)
    with pytest.raises(ConfigError, match="dmri.loss_region must be patch or brain"):
        dmri_config(loss_region="mask")
    with pytest.raises(ConfigError, match="dmri.subjects is required"):
        dmri_config(kind="files")
    with pytest.raises(ConfigError, match="missing required key 'dmri.subjects\\[0\\].dwi'"):
        dmri_config(kind="files", subjects=[{"t1": "t1.nii.gz"}])
    cfg = dmri_config(model={"name": "liif", "args": {"G0": 8, "D": 1, "C": 2, "G": 8}})
    with pytest.raises(ConfigError, match="is 2D but task 'dmri3d'"):
        build_task(cfg, create_model(cfg.model.name, **cfg.model.args))
    with pytest.raises(InputError, match="smaller than the largest HR patch"):
        tiny_task(lr_patch=8)


def test_csr_dmri_trains_on_the_phantom(tmp_path):
    final = train(dmri_config(tmp_path), show_progress=False)
    loaded = load_checkpoint(final)
    assert loaded.payload["model"]["architecture"] == "csr_dmri"
    assert loaded.payload["step"] == 3 and loaded.payload["data"]["task"] == "dmri3d"
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(rows) == 4
    header = rows[0].split(",")
    assert all(float(r.split(",")[header.index("kloss")]) > 0 for r in rows[1:])


# -- evaluation ----------------------------------------------------------------------------

def test_tensor_fidelity_on_the_phantom(phantom):
    s = phantom_dwi_subject(phantom)
    maps = fit_tensors(s.shell, s.bvals, s.bvecs, s.mean_b0, s.mask)
    brain = s.mask
    np.testing.assert_allclose(maps.fa[brain], phantom.fa[brain], atol=1e-4)
    same = tensor_fidelity(s.shell, s.shell, s.bvals, s.bvecs, s.mask, s.mean_b0)
    assert same["fa_mae"] == 0 and same["md_mae"] == 0 and same["angle_mean_deg"] < 1e-3
    assert same["wm_voxels"] == int(((phantom.fa > 0.2) & brain).sum())
    blurred = ndimage.gaussian_filter(s.shell, (1, 1, 1, 0)) * brain[..., None]
    worse = tensor_fidelity(blurred, s.shell, s.bvals, s.bvecs, s.mask, s.mean_b0)
    assert worse["fa_mae"] > 0.02 and worse["md_mae"] > 1e-5 and worse["angle_mean_deg"] > 0.5
    scores = evaluate_dwi_volume(blurred, s.shell, brain)
    assert len(scores["per_volume"]) == 12
    assert scores["psnr"] == pytest.approx(np.mean([r["psnr"] for r in scores["per_volume"]]))
    # Each volume's PSNR by hand: squared error over the brain, peak = max - min in the brain.
    for v in (0, 7):
        hr, sr = s.shell[..., v][brain].astype(np.float64), blurred[..., v][brain]
        expected = 10 * np.log10((hr.max() - hr.min()) ** 2 / np.mean((sr - hr) ** 2))
        assert scores["per_volume"][v]["psnr"] == pytest.approx(expected, abs=1e-4)
    # A heavier blur scores lower on both image metrics.
    heavier = ndimage.gaussian_filter(s.shell, (2, 2, 2, 0)) * brain[..., None]
    lower = evaluate_dwi_volume(heavier, s.shell, brain)
    assert lower["psnr"] < scores["psnr"] - 1.0 and lower["ssim"] < scores["ssim"] < 1.0
    assert evaluate_dwi_volume(s.shell, s.shell, brain)["ssim"] == 1.0
    with pytest.raises(InputError, match="does not match"):
        tensor_fidelity(blurred[..., :3], s.shell, s.bvals, s.bvecs, s.mask)


# -- real data (skipped where absent) ----------------------------------------------------

def test_philips_subject_loads_with_t1_on_the_dwi_grid():
    root = shared_dataset("dwi-philips-3t")
    subject = load_dwi_subject(root / "2201_WIP_DTI_S2MB2.nii.gz",
                               root / "1301_WIP_ADNI_Sag3D_MPRAGE.nii.gz")
    assert subject.shell.shape == (128, 128, 82, 16) and subject.bvecs.shape == (3, 16)
    assert (subject.bvals == 1000).all() and subject.t1.shape == subject.mask.shape
    assert 0.05 < subject.mask.mean() < 0.4
    inside = subject.shell[subject.mask]
    assert 0.2 < np.median(inside) < 0.7 and inside.max() <= 2.0
    assert 0.3 < np.median(subject.t1[subject.mask]) < 1.0
    # T1w (bright white matter, dark CSF) and b=0 (bright CSF) anti-correlate once aligned.
    assert corr(subject.t1, subject.mean_b0, subject.mask) < -0.2


def _directions(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return g / g.norm(dim=1, keepdim=True)


def test_tensor_loss_counts_only_the_error_of_the_fitted_anisotropy():
    k, b = 12, 1000.0
    g = _directions(k)
    bvecs, bvals = g[None].float(), torch.full((1, k), b)
    target = torch.rand(1, k, 4, 5, 6) + 0.5
    # The same relative change in every direction (S_0 or MD moves): nothing.
    same = target * (1 + 0.3 * torch.rand(1, 1, 4, 5, 6))
    assert float(tensor_loss(same, target, bvecs, bvals)) < 1e-5
    # A small change of the anisotropy (first order: the relative error is the log error):
    # S_k * exp(-b g_k^T dD g_k) with a traceless dD.
    delta = torch.tensor([[2.0, 0.5, 0.0], [0.5, -1.0, 0.3], [0.0, 0.3, -1.0]],
                         dtype=torch.float64) * 1e-5
    log_change = -b * torch.einsum("ki,ij,kj->k", g, delta, g)
    bent = target * torch.exp(log_change).float().reshape(1, k, 1, 1, 1)
    expected = float((log_change - log_change.mean()).square().mean().sqrt())
    assert float(tensor_loss(bent, target, bvecs, bvals)) == pytest.approx(expected, rel=0.03)
    # An error across directions that no tensor explains (orthogonal to the design): nothing,
    # though the angular loss counts it.
    design = tensor_design(bvecs.double(), bvals.double())[0]
    q, _ = torch.linalg.qr(torch.cat([design, torch.eye(k, dtype=torch.float64)], 1))
    outside = (0.02 * q[:, 7]).float().reshape(1, k, 1, 1, 1)
    off = target * (1 + outside)
    assert float(tensor_loss(off, target, bvecs, bvals)) < 1e-5
    assert float(angular_loss(off, target)) > 1e-3
    # Flipping and permuting the axes of every direction (dmri.augment) changes nothing.
    turned = bvecs[..., [2, 0, 1]] * torch.tensor([-1.0, 1.0, -1.0])
    torch.testing.assert_close(tensor_loss(bent, target, turned, bvals),
                               tensor_loss(bent, target, bvecs, bvals))
    # A voxel outside the mask in any volume does not count; none counted: 0.
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[..., :2, :, :] = False
    mask[0, 3, 2] = False
    moved = bent.clone()
    moved[..., :3, :, :] = target[..., :3, :, :]
    torch.testing.assert_close(tensor_loss(moved, target, bvecs, bvals, mask),
                               tensor_loss(bent[..., 3:, :, :], target[..., 3:, :, :],
                                           bvecs, bvals))
    assert float(tensor_loss(bent, target, bvecs, bvals, torch.zeros_like(mask))) == 0.0
    with pytest.raises(ValueError, match="b-vectors"):
        tensor_loss(bent, target, bvecs[:, :5], bvals)


def test_tensor_loss_groups_come_from_one_shell_and_enter_the_objective():
    # Three shells (two simulated) and the mean b=0 as one more volume.
    shells = dict(direction_group=8, all_shells=True, batch_size=16, domain="signal",
                  include_b0=True, simulate_bvalues=[2000, 3000], simulate_per_bvalue=8)
    task, model = tiny_task(tensor_weight=1.0, **shells)
    bvals = task.subjects[0].bvals
    assert len(np.unique(bvals)) == 4
    counted, seen = 0, set()
    for step in range(6):
        batch = task.batch(step)
        for g in (0, 8):
            b = batch["bval"][g:g + 8]
            if b[0] > 0:
                assert float(b.max() - b.min()) <= 200.0
                seen.add(float(b[0]))
            else:  # after a b=0 first volume: any volumes, and the group does not count
                assert not batch["tensor_ok"][g]
            volumes = batch["volume"][g:g + 8].numpy()
            np.testing.assert_allclose(b.numpy(), bvals[volumes], rtol=1e-6)
            np.testing.assert_allclose(batch["bvec"][g:g + 8].numpy(),
                                       task.subjects[0].bvecs[:, volumes].T, rtol=1e-6)
        loss, parts = task.loss(model, batch)
        counted += parts["tloss"] > 0
        plain, plain_parts = tiny_task(**shells)[0].loss(model, batch)
        assert "tloss" not in plain_parts
        torch.testing.assert_close(loss - plain, torch.tensor(parts["tloss"]), rtol=1e-4,
                                   atol=1e-6)
    assert counted and len(seen) > 1
    # A group that holds a mixed volume is not counted.
    batch = task.batch(0)
    none = dict(batch, tensor_ok=torch.zeros_like(batch["tensor_ok"]))
    assert task.loss(model, none)[1]["tloss"] == 0.0
    with pytest.raises(ConfigError, match="set dmri.direction_group to 7 or more"):
        dmri_config(tensor_weight=0.1, direction_group=6, batch_size=6)
