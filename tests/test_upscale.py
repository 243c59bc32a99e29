"""Whole-volume inference: world-space correctness, tiling, safety, 4D streaming, batch."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from mrisr.cli.main import main
from mrisr.data.phantom import make_brain_phantom, make_dwi_phantom
from mrisr.degradation import degrade_volume, thick_slice
from mrisr.errors import InputError
from mrisr.evaluation.metrics import psnr
from mrisr.grid import resample_affine, voxel_sizes
from mrisr.inference import upscale as up
from mrisr.inference.predict import full_grid_query
from mrisr.inference.streaming import StreamingNiftiWriter
from mrisr.inference.tiling import decode_tiled
from mrisr.io import load_nifti, save_nifti, write_bvals, write_bvecs
from mrisr.models import create_model
from mrisr.models.registry import weights_path

from conftest import shared_dataset

shipped = pytest.mark.skipif(not all(weights_path(name).exists() for name in
                                     ("dualarbnet_s", "liif_s", "liif_robust")),
                             reason="shipped weights not built yet")


@pytest.mark.parametrize("fusion_convs,tile,residual", [(1, 9, False), (2, 16, "cubic"),
                                                         (2, 23, "linear")])
def test_tiled_decoding_equals_untiled(fusion_convs, tile, residual):
    torch.manual_seed(0)
    model = create_model("dualarbnet", G0=8, D=1, C=2, G=8, fusion_channels=8,
                         fusion_convs=fusion_convs, skip_hidden=8, attention_reduction=4,
                         image_residual=residual).eval()
    lr, ref = torch.rand(1, 1, 21, 18), torch.rand(1, 1, 47, 40)
    query = full_grid_query((21, 18), (63, 55), (47, 40))
    with torch.no_grad():
        enc = model.encode(lr, ref)
        full = model.decode(enc, query)
        tiled = decode_tiled(model, enc, query, tile)
    # Tiles cut through the fusion branch's 3x3 convolutions and its global channel pooling.
    assert tile < 63 and model.decoder_radius > 0
    assert float((tiled - full).abs().max() / full.abs().max()) < 1e-5


def test_streaming_writer_equals_nibabel(tmp_path):
    data = np.random.default_rng(0).random((5, 6, 7, 3)).astype(np.float32)
    affine = np.diag([1.5, 2.0, 2.5, 1.0])
    for name in ("a.nii", "a.nii.gz"):
        writer = StreamingNiftiWriter(tmp_path / name, data.shape, affine)
        for v in range(3):
            writer.write_volume(data[..., v])
        writer.close()
        img = nib.load(str(tmp_path / name))
        np.testing.assert_array_equal(np.asarray(img.dataobj), data)
        np.testing.assert_allclose(img.affine, affine)
        assert img.get_data_dtype() == np.float32


def test_output_grid_and_slice_axis():
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    shape, out_aff = up.output_grid((200, 200, 30), affine, voxel_size=1.0)
    assert shape == (200, 200, 150) and np.allclose(voxel_sizes(out_aff), 1.0)
    assert up.choose_slice_axis((200, 200, 30), (400, 400, 30), [1, 1, 5]) == 2
    # Through-plane upscaling of thick slices: the model runs in a plane holding the thick axis.
    assert up.choose_slice_axis((200, 200, 30), (200, 200, 150), [1, 1, 5]) in (0, 1)
    assert up.choose_slice_axis((200, 200, 30), (200, 200, 150), [1, 1, 5], "axial") == 2
    with pytest.raises(InputError, match="exactly one"):
        up.output_grid((4, 4, 4), affine, scale=2, voxel_size=1)
    with pytest.raises(InputError, match="unknown plane"):
        up.choose_slice_axis((4, 4, 4), (8, 8, 4), [1, 1, 1], "diagonal")


def oblique(affine: np.ndarray, angle: float = 0.35) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.eye(4)
    rot[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    return rot @ affine


def reorient_sagittal(data: np.ndarray, affine: np.ndarray):
    """The same image stored with the left-right axis as the slice axis (last)."""
    perm = (1, 2, 0)
    new_aff = np.eye(4)
    new_aff[:3, :3] = affine[:3, :3][:, list(perm)]
    new_aff[:3, 3] = affine[:3, 3]
    return np.transpose(data, perm).copy(), new_aff


def round_trip(tmp_path, hr, ref, affine, ref_affine, scale, name, plane="auto"):
    lr, lr_aff = degrade_volume(hr, affine, scale)
    save_nifti(lr, lr_aff, tmp_path / f"{name}_lr.nii.gz")
    save_nifti(ref, ref_affine, tmp_path / f"{name}_ref.nii.gz")
    img = up.upscale_file(tmp_path / f"{name}_lr.nii.gz", tmp_path / f"{name}_sr.nii.gz",
                          tmp_path / f"{name}_ref.nii.gz", scale=scale, plane=plane,
                          device="cpu")
    sr = np.asarray(img.dataobj)
    # The output lands on the original grid in world space.
    np.testing.assert_allclose(img.affine, affine, atol=1e-4)
    assert sr.shape == hr.shape
    from mrisr.degradation import spline_resize
    axis = int(np.argmin(scale))
    base = np.moveaxis(spline_resize(np.moveaxis(lr, axis, 0), np.delete(hr.shape, axis),
                                     order=3), 0, axis)
    peak = float(hr.max() - hr.min())
    return psnr(sr, hr, peak), psnr(np.clip(base, 0, None), hr, peak)


@shipped
def test_round_trips_in_world_space_axial_sagittal_oblique_anisotropic(tmp_path):
    ph = make_brain_phantom(shape=(96, 96, 12), voxel_size=(1.2, 1.0, 3.0), seed=2)
    cases = {"axial": (ph.t2w, ph.t1w, ph.affine)}
    sag_t2, sag_aff = reorient_sagittal(ph.t2w, ph.affine)
    sag_t1, _ = reorient_sagittal(ph.t1w, ph.affine)
    cases["sagittal"] = (sag_t2, sag_t1, sag_aff)
    cases["oblique"] = (ph.t2w, ph.t1w, oblique(ph.affine))
    for name, (hr, ref, affine) in cases.items():
        scale = tuple(2.0 if n > 20 else 1.0 for n in hr.shape)
        ours, cubic = round_trip(tmp_path, hr, ref, affine, affine, scale, name)
        assert ours > cubic, (name, ours, cubic)


@shipped
def test_reference_at_another_resolution_orientation_and_fov(tmp_path):
    ph = make_brain_phantom(shape=(96, 96, 12), voxel_size=(1.0, 1.0, 3.0), seed=3)
    # Reference: sagittal storage (i: anterior, j: superior, k: right), coarser in-plane
    # (1.5 mm), and covering part of the field of view: 60 of 96 mm left-right and only the
    # upper slices (from z = -4 mm; the target's slices span -16.5 to 16.5 mm).
    from mrisr.resample import resample_to_grid
    ref_shape = (64, 8, 40)
    ref_aff = np.array([[0, 0, 1.5, -30], [1.5, 0, 0, -47], [0, 3.0, 0, -4], [0, 0, 0, 1]])
    ref, _ = resample_to_grid(ph.t1w, ph.affine, ref_aff, ref_shape)
    lr, lr_aff = degrade_volume(ph.t2w, ph.affine, (2, 2, 1))
    save_nifti(lr, lr_aff, tmp_path / "lr.nii.gz")
    save_nifti(ref, ref_aff, tmp_path / "ref.nii.gz")
    img = up.upscale_file(tmp_path / "lr.nii.gz", tmp_path / "sr.nii.gz", tmp_path / "ref.nii.gz",
                          scale=(2, 2, 1), device="cpu")
    info = json.loads((tmp_path / "sr.json").read_text())
    assert 0 < info["reference"]["covered_fraction"] < 1
    assert info["reference"]["slices_without_reference"] > 0
    np.testing.assert_allclose(info["reference"]["voxel_size"][:2], [1.5, 1.5], atol=0.05)
    assert np.isfinite(np.asarray(img.dataobj)).all()
    with pytest.raises(InputError, match="no spatial overlap"):
        far = ref_aff.copy()
        far[:3, 3] += 1000
        save_nifti(ref, far, tmp_path / "far.nii.gz")
        up.upscale_file(tmp_path / "lr.nii.gz", tmp_path / "sr2.nii.gz", tmp_path / "far.nii.gz",
                        scale=(2, 2, 1), device="cpu")
    assert not (tmp_path / "sr2.nii.gz").exists()


@shipped
def test_real_volume_round_trips_axial_sagittal_oblique(tmp_path):
    root = shared_dataset("brats18-tcia")
    t2 = load_nifti(root / "Brats18_TCIA13_623_1" / "Brats18_TCIA13_623_1_t2.nii.gz")
    t1 = load_nifti(root / "Brats18_TCIA13_623_1" / "Brats18_TCIA13_623_1_t1.nii.gz")

    def crop(box):
        aff = t2.affine.copy()
        aff[:3, 3] = t2.affine[:3, :3] @ [b.start for b in box] + t2.affine[:3, 3]
        return t2.data[box], t1.data[box], aff

    def thick(data, affine, axis):
        # 2 mm slices from pairs of 1 mm slices: anisotropic voxels.
        out = thick_slice(data, 2.0, axis)
        return out, resample_affine(affine, data.shape, out.shape)

    cases = {}
    t2a, t1a, aff = crop((slice(40, 200), slice(30, 210), slice(66, 78)))
    t2a, aff_t = thick(t2a, aff, 2)
    t1a, _ = thick(t1a, aff, 2)
    cases["axial"] = (t2a, t1a, aff_t)
    t2s, t1s, aff = crop((slice(110, 122), slice(30, 210), slice(20, 140)))
    t2s, aff_t = thick(t2s, aff, 0)
    t1s, _ = thick(t1s, aff, 0)
    sag_t2, sag_aff = reorient_sagittal(t2s, aff_t)
    sag_t1, _ = reorient_sagittal(t1s, aff_t)
    cases["sagittal"] = (sag_t2, sag_t1, sag_aff)
    cases["oblique"] = (t2a, t1a, oblique(aff_t))
    for name, (hr, ref, affine) in cases.items():
        scale = tuple(2.0 if n > 20 else 1.0 for n in hr.shape)
        ours, cubic = round_trip(tmp_path, hr, ref, affine, affine, scale, name)
        assert ours > cubic + 1.0, (name, ours, cubic)


@shipped
def test_4d_series_volume_by_volume_with_bvals(tmp_path):
    ph = make_dwi_phantom(shape=(24, 28, 6), n_directions=3)
    lr, lr_aff = degrade_volume(ph.dwi, ph.affine, (2, 2, 1))
    save_nifti(lr, lr_aff, tmp_path / "dwi.nii.gz")
    write_bvals(tmp_path / "dwi.bval", ph.bvals)
    write_bvecs(tmp_path / "dwi.bvec", ph.bvecs)
    # A 2D model runs the series volume by volume (the default of a series is cubic).
    img = up.upscale_file(tmp_path / "dwi.nii.gz", tmp_path / "sr.nii.gz", scale=(2, 2, 1),
                          device="cpu", model="liif_s")
    assert img.shape == (24, 28, 6, 4)
    assert (tmp_path / "sr.bval").read_text() == (tmp_path / "dwi.bval").read_text()
    assert (tmp_path / "sr.bvec").exists()
    from mrisr.io.nifti import Volume
    one = up.upscale(Volume(lr[..., 2], lr_aff), scale=(2, 2, 1), device="cpu", model="liif_s")
    np.testing.assert_allclose(np.asarray(img.dataobj)[..., 2], one.data, rtol=1e-5, atol=1e-6)


# -- safety of `mrisr upscale` (one behaviour per test) -------------------------------------

@pytest.fixture(scope="module")
def small_t2():
    ph = make_brain_phantom(shape=(48, 48, 6), voxel_size=(2, 2, 4))
    return ph.t2w, ph.affine


@pytest.fixture
def scan(tmp_path, small_t2):
    """A small T2w NIfTI alone in a fresh folder."""
    path = tmp_path / "t2.nii.gz"
    save_nifti(*small_t2, path)
    return path


def upscale_cli(scan, out, *extra):
    return main(["upscale", str(scan), "--scale", "2,2,1", "-o", str(out), "-q", *extra])


def test_overwrite_flag_never_replaces_an_input(scan, capsys):
    before = scan.read_bytes()
    assert upscale_cli(scan, scan, "--overwrite") == 2
    assert "overwrite an input" in capsys.readouterr().err
    assert scan.read_bytes() == before


@shipped
def test_existing_output_is_kept_unless_overwrite_is_given(scan, capsys):
    out = scan.parent / "sr.nii.gz"
    out.write_bytes(b"an earlier result")
    assert upscale_cli(scan, out) == 2
    assert "exists" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier result"
    # The refusal is about the existing file: with --overwrite the same command replaces it.
    assert upscale_cli(scan, out, "--overwrite") == 0
    assert nib.load(str(out)).shape == (96, 96, 6)


@shipped
def test_interrupted_run_leaves_no_partial_output_or_temporary_file(scan, monkeypatch):
    calls = {"n": 0}
    original = up.SliceUpscaler._batch

    def interrupted_at_the_third_batch(self, *a):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *a)
    monkeypatch.setattr(up.SliceUpscaler, "_batch", interrupted_at_the_third_batch)
    assert upscale_cli(scan, scan.parent / "x.nii.gz") == 130
    assert calls["n"] == 3  # stopped part-way, after two batches had been upscaled
    assert sorted(p.name for p in scan.parent.iterdir()) == ["t2.nii.gz"]


@shipped
def test_output_larger_than_memory_is_refused_before_any_work(scan, monkeypatch, capsys):
    monkeypatch.setattr(up, "available_memory", lambda: 10_000)
    out = scan.parent / "big.nii.gz"
    assert main(["upscale", str(scan), "--scale", "8", "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "memory" in err and "big.nii.gz" in err
    assert sorted(p.name for p in scan.parent.iterdir()) == ["t2.nii.gz"]


def test_zero_scale_is_a_usage_error(scan):
    out = scan.parent / "z.nii.gz"
    with pytest.raises(SystemExit) as info:
        main(["upscale", str(scan), "--scale", "0", "-o", str(out), "-q"])
    assert info.value.code == 2 and not out.exists()


@shipped
def test_batch_folder_and_sidecar(tmp_path, capsys):
    ph = make_brain_phantom(shape=(40, 40, 4), voxel_size=(2, 2, 4))
    (tmp_path / "in").mkdir()
    for i in range(2):
        save_nifti(ph.t2w * (i + 1), ph.affine, tmp_path / "in" / f"s{i}.nii.gz")
    assert main(["upscale", str(tmp_path / "in"), "--voxel-size", "1,1,4", "-o",
                 str(tmp_path / "out"), "-q"]) == 0
    for i in range(2):
        img = nib.load(str(tmp_path / "out" / f"s{i}.nii.gz"))
        assert img.shape == (80, 80, 4)
        info = json.loads((tmp_path / "out" / f"s{i}.json").read_text())
        assert info["model"] == "liif_robust" and info["mrisr_version"]
        assert info["output_voxel_size"] == pytest.approx([1.0, 1.0, 4.0])


@pytest.mark.parametrize("keep_bytes,channel,spatial", [(0, True, True), (2 ** 30, True, True),
                                                         (0, False, True), (0, True, False)])
def test_layerwise_band_decoding_equals_untiled(keep_bytes, channel, spatial):
    from mrisr.inference.tiling import decode_layerwise
    torch.manual_seed(3)
    model = create_model("dualarbnet", G0=8, D=1, C=2, G=8, fusion_channels=8, fusion_convs=2,
                         skip_hidden=8, attention_reduction=4, channel_attention=channel,
                         spatial_attention=spatial, sampling="linear").eval()
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    lr, ref = torch.rand(2, 1, 13, 11), torch.rand(2, 1, 20, 30)
    query = full_grid_query((13, 11), (41, 29), (20, 30))
    with torch.no_grad():
        enc = model.encode(lr, ref)
        full = model.decode(enc, query)
        # bands of 3 rows (the layer's reach): every band's halo comes from updated neighbours
        banded = decode_layerwise(model, enc, query, tile=9, keep_bytes=keep_bytes)
    assert float((banded - full).abs().max()) < 1e-5 * float(full.abs().max())


@shipped
def test_batched_slices_equal_one_by_one():
    from mrisr.inference.predict import predict_slice, predict_slices
    ph = make_brain_phantom(shape=(24, 28, 3), voxel_size=(2, 2, 2))
    model = create_model("dualarbnet_s", pretrained=True)
    lrs = [ph.t2w[:, :, k] for k in range(3)]
    refs = [ph.t1w[:, :, k] for k in range(3)]
    batched = predict_slices(model, lrs, (48, 56), refs, tile=20)
    for lr, ref, out in zip(lrs, refs, batched):
        alone = predict_slice(model, lr, (48, 56), ref)
        assert float(np.abs(out - alone).max()) < 1e-5 * float(np.abs(alone).max())
