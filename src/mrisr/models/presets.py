"""Named model configurations.

``*_ref`` reproduce the public reference code's sizes (slow on a CPU: docs/REFERENCE_NOTES.md);
``*_s`` are compact presets that train on two CPU cores within an hour and are the shipped
defaults once trained.
"""
from mrisr.models.registry import Preset, register_preset

_PAPER_ENCODER = {"G0": 64, "D": 5, "C": 10, "G": 64}
_COMPACT_ENCODER = {"G0": 32, "D": 3, "C": 4, "G": 32}
_COMPACT_DUALARBNET = {**_COMPACT_ENCODER, "fusion_channels": 32, "fusion_convs": 1,
                       "skip_hidden": 32, "attention_reduction": 8, "sampling": "nearest",
                       "reference_grad": True, "image_residual": "cubic"}

for preset in (
    Preset("dualarbnet_ref", "dualarbnet",
           {**_PAPER_ENCODER, "fusion_channels": 128, "fusion_convs": 4, "sampling": "linear",
            "reference_grad": False},
           "Dual-ArbNet as the reference code: bilinear feature sampling, reference encoded "
           "without gradient, 13.7 M parameters"),
    Preset("dualarbnet_paper", "dualarbnet",
           {**_PAPER_ENCODER, "fusion_channels": 128, "fusion_convs": 4, "sampling": "nearest"},
           "Dual-ArbNet as the paper describes it (nearest feature sampling)"),
    Preset("dualarbnet_s", "dualarbnet", _COMPACT_DUALARBNET,
           "compact Dual-ArbNet for CPU training (shared encoder trained through both paths as "
           "the paper; residual over the interpolated LR image)"),
    Preset("liif_ref", "liif", {"G0": 64, "D": 16, "C": 8, "G": 64},
           "LIIF with the RDN encoder and 4 x 256 MLP of the LIIF paper"),
    Preset("liif_s", "liif", {**_COMPACT_ENCODER, "hidden": [96, 96, 96, 96]},
           "compact LIIF, sized like dualarbnet_s"),
):
    register_preset(preset)

# The same architectures trained for other sites' scans (configs/train_*_robust*.yaml): every
# brats18 contrast pair, whole heads with synthetic contrasts, domain randomisation, random
# acquisitions including thick slices (docs/BENCHMARKS.md, "Scans unlike the training data").
for preset in (
    Preset("dualarbnet_robust", "dualarbnet", _COMPACT_DUALARBNET,
           "dualarbnet_s fine-tuned for hours on several sources with domain randomisation "
           "and random acquisitions; the default with a reference"),
    Preset("liif_robust", "liif", {**_COMPACT_ENCODER, "hidden": [96, 96, 96, 96]},
           "liif_s fine-tuned for hours with dualarbnet_robust's recipe; the default without "
           "a reference"),
):
    register_preset(preset)

for name, flag in (("noref", "use_reference"), ("noscale", "use_scale"),
                   ("nocoord", "use_coord")):
    register_preset(Preset(f"dualarbnet_s_{name}", "dualarbnet",
                           {**_COMPACT_DUALARBNET, flag: False},
                           f"dualarbnet_s without {flag.split('_')[1]} (paper Table 2 ablation)"))

# 3D diffusion family (CSR-dMRI, ArSSR, Table 2 ablations). The *_s sizes train on CPU; the
# *_paper ones follow the papers (ArSSR's RDN, 128 features, width-256 decoders).
# They all read attenuations divided by the volume's level (CSRdMRI's level_norm), ArSSR
# included, so that every model meets another shell the same way.
_COMPACT_3D = {**_COMPACT_ENCODER, "feature_channels": 64, "hidden": 128, "level_norm": True}
# The compact CSR-dMRI presets depart from the paper in three ways (docs/BENCHMARKS.md):
# they learn a residual over cubic B-spline interpolation, as dualarbnet_s does over cubic
# (with a CPU budget the implicit function alone stays below interpolation); the decoder reads
# the offset from the nearest LR voxel rather than the position in the patch (which means
# something else at inference, over the whole volume); and it reads the scale, as Dual-ArbNet
# does. arssr_s stays as published.
_COMPACT_CSR = {**_COMPACT_3D, "image_residual": "bspline", "coordinate": "relative",
                "use_scale": True}
# The T1w at its own resolution has (s^3 times) more voxels than the LR DWI: a lighter encoder.
_COMPACT_T1_ENCODER = {"G0": 16, "D": 2, "C": 3, "G": 16, "out_channels": 32}
for preset in (
    Preset("csr_dmri_paper", "csr_dmri", {},
           "CSR-dMRI as the paper: LR DWI + T1w channels, RDN (ArSSR's size) to 128 features, "
           "8 x 256 implicit function with a residual to the 4th ReLU"),
    Preset("arssr_paper", "arssr", {}, "ArSSR with its RDN encoder and 2 x 4-layer decoder"),
    Preset("csr_dmri_s", "csr_dmri", _COMPACT_CSR,
           "compact CSR-dMRI for CPU training (residual over cubic B-spline interpolation)"),
    Preset("arssr_s", "arssr", _COMPACT_3D, "compact ArSSR, sized like csr_dmri_s"),
    Preset("csr_dmri_s_m1", "csr_dmri", {**_COMPACT_CSR, "use_t1": False},
           "csr_dmri_s without the T1w (Table 2's M1, CSR decoder)"),
    Preset("csr_dmri_s_baseline", "csr_dmri",
           {**_COMPACT_CSR, "use_t1": False, "decoder": "baseline"},
           "csr_dmri_s without implicit function or T1w (Table 2's Baseline; train it with "
           "dmri.frequency_weight 0)"),
    Preset("csr_dmri_s_own", "csr_dmri",
           {**_COMPACT_CSR, "t1_mode": "own_resolution", "t1_encoder": _COMPACT_T1_ENCODER},
           "csr_dmri_s with the T1w encoded on its own grid by a second, lighter RDN"),
    Preset("dwi_refiner_s", "spline_refiner", {"width": 32, "depth": 8},
           "cubic B-spline interpolation plus an 8-layer residual CNN on the output grid "
           "(no T1w): the 4D default across scanners"),
):
    register_preset(preset)
