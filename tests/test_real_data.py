"""Integration tests on the team's real scans (skipped where ../shared/data is absent)."""
import numpy as np

from mrisr.config import from_dict
from mrisr.data.datasets import load_subject
from mrisr.evaluation import EvaluateConfig, evaluate
from mrisr.io import Subject, load_nifti

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
    assert 30 < mean[("kspace_zerofill", "2")] < 45


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
