"""Named model configurations.

``*_ref`` reproduce the public reference code's sizes (slow on a CPU: see METHODS.md);
``*_s`` are compact presets that train on two CPU cores within an hour and are the shipped
defaults once trained.
"""
from mrisr.models.registry import Preset, register_preset

_PAPER_ENCODER = {"G0": 64, "D": 5, "C": 10, "G": 64}
_COMPACT_ENCODER = {"G0": 32, "D": 3, "C": 4, "G": 32}
_COMPACT_DUALARBNET = {**_COMPACT_ENCODER, "fusion_channels": 32, "fusion_convs": 1,
                       "skip_hidden": 32, "attention_reduction": 8, "sampling": "nearest",
                       "reference_grad": False}

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
           "compact Dual-ArbNet for CPU training (reference encoded without gradient, as the "
           "reference code, which halves the cost of an HR reference)"),
    Preset("liif_ref", "liif", {"G0": 64, "D": 16, "C": 8, "G": 64},
           "LIIF with the RDN encoder and 4 x 256 MLP of the LIIF paper"),
    Preset("liif_s", "liif", {**_COMPACT_ENCODER, "hidden": [96, 96, 96, 96]},
           "compact LIIF, sized like dualarbnet_s"),
):
    register_preset(preset)

for name, flag in (("noref", "use_reference"), ("noscale", "use_scale"),
                   ("nocoord", "use_coord")):
    register_preset(Preset(f"dualarbnet_s_{name}", "dualarbnet",
                           {**_COMPACT_DUALARBNET, flag: False},
                           f"dualarbnet_s without {flag.split('_')[1]} (paper Table 2 ablation)"))
