"""Copy the diffusion series of a dMRI training config into a folder small enough to travel to
a device machine (the ``../shared`` folder beside a checkout does not travel, and what does is
limited to 64 MiB).

Every file the config names under ``${MRISR_DATA}`` is written to the same relative path under
OUT, so that ``MRISR_DATA=OUT mrisr train CONFIG`` reads the copies. T1w images, ``.bval``,
``.bvec`` and ``.json`` files are copied as they are; in each DWI series the voxels farther than
``--margin`` voxels from the brain mask of its mean b=0 are set to 0 (what training reads is the
brain: patches are cut around brain voxels, and the signal patches are 0 outside the mask), which
halves the compressed size of the nine series of ``configs/train_csr_dmri_s_multivendor.yaml``
(80 MB -> about 49 MB). The brain masks computed from the copies differ from the originals' in
well under 1 % of the voxels. Evaluate on the original files, not on the copies.

    python scripts/pack_dwi_for_device.py configs/train_csr_dmri_s_multivendor.yaml device_data
    echo device_data >> .git/info/exclude       # carried, never committed
    # device: MRISR_DATA=device_data mrisr train configs/train_csr_dmri_s_multivendor.yaml ...

The copies are data of ../shared/data: never commit them.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mrisr.config import data_root, expand_vars, load_yaml
from mrisr.data.dwi import b0_indices, brain_mask
from mrisr.io.dwi import companion_paths, read_bvals


def pack_series(src: Path, dst: Path, margin: int) -> None:
    """``src`` with the background beyond ``margin`` voxels of the brain set to 0, in the
    file's own data type and scaling."""
    img = nib.load(str(src))
    bvals = read_bvals(companion_paths(src)[0])
    data = np.asarray(img.dataobj, dtype=np.float32)
    zero = b0_indices(bvals)
    mask = brain_mask(data[..., zero if zero.size else slice(None)].mean(axis=-1))
    keep = ndimage.binary_dilation(mask, iterations=margin)
    raw = np.asanyarray(img.dataobj.get_unscaled())
    raw = raw * keep[..., None].astype(raw.dtype)
    nib.save(nib.Nifti1Image(raw, img.affine, img.header), str(dst))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a dMRI training config (its dmri.subjects are packed)")
    parser.add_argument("out", help="output folder (the MRISR_DATA of the device)")
    parser.add_argument("--margin", type=int, default=4,
                        help="voxels kept around the brain mask (default 4)")
    args = parser.parse_args()
    cfg = load_yaml(args.config)
    root, out = data_root().resolve(), Path(args.out)
    total = 0
    for subject in (cfg.get("dmri") or {}).get("subjects") or []:
        dwi = Path(expand_vars(subject["dwi"])).resolve()
        files = [(dwi, True)] + [(p, False) for p in (*companion_paths(dwi),
                                                      dwi.with_name(dwi.name[:-7] + ".json"))]
        if subject.get("t1"):
            files.append((Path(expand_vars(subject["t1"])).resolve(), False))
        for src, is_series in files:
            if not src.exists():
                continue
            dst = out / src.relative_to(root)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if is_series:
                pack_series(src, dst, args.margin)
            else:
                shutil.copyfile(src, dst)
            total += dst.stat().st_size
            print(f"{dst}: {src.stat().st_size / 2**20:.1f} -> {dst.stat().st_size / 2**20:.1f} MB",
                  flush=True)
    print(f"{out}: {total / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
