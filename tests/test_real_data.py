"""Integration tests on the team's real scans (skipped where ../shared/data is absent)."""
import json

import nibabel as nib
import numpy as np
import pytest

from mrisr.cli.main import main
from mrisr.config import from_dict
from mrisr.data.datasets import load_subject
from mrisr.evaluation import EvaluateConfig, evaluate
from mrisr.data.dwi import b0_indices, brain_mask, select_shell
from mrisr.degradation import degrade_volume, spline_resize
from mrisr.inference.upscale import DEFAULT_DMRI_MODEL
from mrisr.io import Subject, load_nifti, read_bval_bvec, save_nifti, write_bvals, write_bvecs
from mrisr.models.registry import weights_path
from mrisr.training.volumes import split_slab

from conftest import shared_dataset


def test_brats_baselines_on_test_patients():
    root = shared_dataset("brats18-tcia")
    cfg = from_dict(EvaluateConfig, {
        "dataset": {"kind": "brats", "root": str(root), "split": "test"},
        "max_slices": 3, "scales": [2, 4]})
    result = evaluate(cfg, show_progress=False)
    assert {r["subject"] for r in result.rows} == {"Brats18_TCIA10_628_1", "Brats18_TCIA13_623_1"}
    mean = {}
    for row in result.rows:
        mean.setdefault((row["method"], row["scale"]), []).append(row["psnr"])
    mean = {k: float(np.mean(v)) for k, v in mean.items()}
    for s in ("2", "4"):
        assert mean[("kspace_zerofill", s)] > mean[("cubic", s)] > mean[("linear", s)] > \
            mean[("nearest", s)]
    # Every zero-filled case scores what a plain numpy computation gives on the file's slice:
    # keep the central round(N / s) block of the centred 2D spectrum, back to the image, magnitude,
    # PSNR over the slice with peak = max - min (the scores do not depend on intensity scaling).
    volumes = {}
    for row in (r for r in result.rows if r["method"] == "kspace_zerofill"):
        name = row["subject"]
        if name not in volumes:
            volumes[name] = np.asarray(nib.load(str(root / name / f"{name}_t2.nii.gz")).dataobj,
                                       dtype=np.float64)
        hr = volumes[name][:, :, row["index"]]
        spectrum = np.fft.fftshift(np.fft.fft2(hr))
        kept = np.zeros(hr.shape, bool)
        kept[tuple(slice(n // 2 - m // 2, n // 2 - m // 2 + m)
                   for n, m in ((n, round(n / float(row["scale"]))) for n in hr.shape))] = True
        pred = np.abs(np.fft.ifft2(np.fft.ifftshift(spectrum * kept)))
        peak = hr.max() - hr.min()
        expected = 10 * np.log10(peak ** 2 / np.mean((pred - hr) ** 2))
        assert row["psnr"] == pytest.approx(expected, abs=1e-4), row
    assert len(volumes) == 2


def test_ixi_reference_on_another_grid_is_placed_through_the_affines():
    root = shared_dataset("ixi002")
    subject = Subject("ixi002", "test", root / "hd_bet_IXI002-Guys-0828-T2.nii.gz",
                      (root / "hd_bet_IXI002-Guys-0828-T1.nii.gz",),
                      root / "hd_bet_mask_IXI002-Guys-0828-T2.nii.gz")
    vol = load_subject(subject)
    t2_mask = vol.mask
    t1_mask = load_subject(Subject("m", "test", subject.target,
                                   (root / "hd_bet_mask_IXI002-Guys-0828-T1.nii.gz",))).reference
    assert vol.reference.shape == vol.target.shape == (256, 256, 130)
    # Brain masks drawn independently on the sagittal T1 and the axial T2 agree once the T1
    # mask is resampled through the affines onto the T2 grid.
    t1_on_t2 = t1_mask > 0.5
    dice = 2 * (t1_on_t2 & t2_mask).sum() / (t1_on_t2.sum() + t2_mask.sum())
    assert dice > 0.9
    assert vol.reference_coverage[t2_mask].mean() > 0.95
    assert load_nifti(subject.target).data.dtype == np.float32


@pytest.mark.skipif(not weights_path(DEFAULT_DMRI_MODEL).exists(),
                    reason="no shipped dMRI weights")
def test_shipped_dmri_model_beats_interpolation_on_the_held_out_slab(tmp_path):
    """`mrisr upscale --model csr_dmri_s` of a real series degraded x2, with its T1w: the
    b=1000 volumes of the slab no training patch touched come out closer to the acquired ones
    than cubic interpolation brings them (docs/BENCHMARKS.md: +0.48 dB on four volumes)."""
    root = shared_dataset("dwi-philips-3t")
    stem = root / "2201_WIP_DTI_S2MB2"
    series = load_nifti(f"{stem}.nii.gz", ndim=(4,))
    bvals, bvecs = read_bval_bvec(f"{stem}.bval", f"{stem}.bvec", series.data.shape[3])
    keep = np.r_[b0_indices(bvals), select_shell(bvals, 1000)[[5, 10]]]
    # The upper half of the head (slices 40-81), which holds the slab and gives the T1w
    # registration enough anatomy; half the work of the whole series.
    start = 40
    hr = series.data[:, :, start:, keep].astype(np.float32)
    affine = series.affine.copy()
    affine[:3, 3] += start * affine[:3, 2]
    lr, lr_affine = degrade_volume(hr, affine, 2, kind="bicubic")
    save_nifti(lr, lr_affine, tmp_path / "dwi.nii.gz")
    write_bvals(tmp_path / "dwi.bval", bvals[keep])
    write_bvecs(tmp_path / "dwi.bvec", bvecs[:, keep])
    code = main(["upscale", str(tmp_path / "dwi.nii.gz"), "--ref",
                 str(root / "1301_WIP_ADNI_Sag3D_MPRAGE.nii.gz"), "--scale", "2",
                 "--model", DEFAULT_DMRI_MODEL,
                 "-o", str(tmp_path / "sr.nii.gz"), "--device", "cpu", "-q"])
    assert code == 0
    assert json.loads((tmp_path / "sr.json").read_text())["model"] == DEFAULT_DMRI_MODEL
    sr = np.asarray(nib.load(tmp_path / "sr.nii.gz").dataobj)
    assert sr.shape == hr.shape
    held_out = split_slab(series.data.shape[:3], 2, 0.25)[1][2]
    slab = np.zeros(hr.shape[:3], bool)
    slab[:, :, held_out.start - start:held_out.stop - start] = True
    scored = brain_mask(hr[..., :-2].mean(axis=-1)) & slab
    for v in (-2, -1):
        cubic = np.clip(spline_resize(lr[..., v], hr.shape[:3], order=3), 0, None)
        err_sr = np.mean((sr[..., v][scored] - hr[..., v][scored]) ** 2)
        err_cubic = np.mean((cubic[scored] - hr[..., v][scored]) ** 2)
        assert err_sr < err_cubic, (v, 10 * np.log10(err_cubic / err_sr))
