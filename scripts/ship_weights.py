#!/usr/bin/env python
"""Copy a trained run's final checkpoint into the package as a preset's shipped weights.

    python scripts/ship_weights.py runs/dualarbnet_s_brats dualarbnet_s [CONFIG]

Writes src/mrisr/weights/<name>.pt (weights and self-description, no optimizer state) and
<name>.yaml (the training config that produced it, for reproduction; CONFIG, if given, is the
config file in configs/ that reproduces it, named in the header), after checking that the
checkpoint is of that preset and loads with weights_only=True.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
import yaml

from mrisr.models.checkpoint import describe
from mrisr.models.loading import create_model, load_checkpoint
from mrisr.models.registry import PRESETS


def main(run: str, name: str, config: str | None = None) -> None:
    src = Path(run) / "final.pt"
    loaded = load_checkpoint(src)
    preset = loaded.payload["model"].get("preset")
    out_dir = Path(__file__).resolve().parents[1] / "src" / "mrisr" / "weights"
    out_dir.mkdir(exist_ok=True)
    if preset == name:
        shutil.copyfile(src, out_dir / f"{name}.pt")
    else:
        # A run of another preset of the same architecture and arguments (e.g. dualarbnet_s
        # trained as dualarbnet_robust) ships under the new name; anything else is refused.
        target = PRESETS.get(name)
        if target is None or target.architecture != loaded.payload["model"]["architecture"] \
                or describe(create_model(name))["args"] != loaded.payload["model"]["args"]:
            raise SystemExit(f"{src}: checkpoint is of preset {preset!r}, not {name!r}")
        payload = torch.load(src, weights_only=True)
        payload["model"]["preset"] = name
        payload["train_config"]["model"]["name"] = name
        torch.save(payload, out_dir / f"{name}.pt")
        loaded = load_checkpoint(out_dir / f"{name}.pt")
    torch.load(out_dir / f"{name}.pt", weights_only=True)
    cfg = loaded.payload["train_config"]
    header = (f"# Training config of the shipped {name} weights (step {loaded.payload['step']}, "
              f"mrisr {loaded.payload['code_version']}).\n")
    if config:
        header += f"# Reproduce with: mrisr train {config}\n"
    (out_dir / f"{name}.yaml").write_text(header + yaml.safe_dump(cfg, sort_keys=False))
    size = (out_dir / f"{name}.pt").stat().st_size / 2**20
    n_params = sum(v.numel() for v in loaded.model.state_dict().values())
    print(f"shipped {name}: {size:.1f} MB, {n_params} parameters")


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
