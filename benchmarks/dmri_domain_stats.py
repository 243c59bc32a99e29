"""What differs between the two diffusion subjects (docs/BENCHMARKS.md, CSR-dMRI section): the
attenuation level of each shell, the roughness of the attenuations (noise), the T1w brain
median against its robust maximum, and how well the placed T1w follows the attenuation with and
without rigid registration; plus the same level and roughness for shells simulated from the
Philips tensor fit (the `dmri.simulate_bvalues` of the training configs), and how close the
level of an LR volume (what inference computes) is to its HR volume's (what training uses).

    python benchmarks/dmri_domain_stats.py
"""
from __future__ import annotations

import os

import numpy as np

from mrisr.config import data_root
from mrisr.data.dwi import attenuation_level, load_dwi_subject, simulate_shells
from mrisr.data.intensity import robust_max
from mrisr.degradation import degrade

SUBJECTS = {
    "dwi-philips-3t": ("2201_WIP_DTI_S2MB2.nii.gz", "1301_WIP_ADNI_Sag3D_MPRAGE.nii.gz", 1000),
    "dwi-siemens-3t": ("10_DWI_dir80_PA.nii.gz", "5_anat-T1w_acq-tfl.nii.gz", 2500),
}


def roughness(volume: np.ndarray, mask: np.ndarray) -> float:
    """Standard deviation of the difference of neighbouring brain voxels along axis 0: noise
    (times sqrt 2) plus anatomy, in attenuation units."""
    pairs = mask[1:] & mask[:-1]
    return float(np.std(np.diff(volume, axis=0)[pairs]))


def main() -> None:
    rows, level_rows = [], []
    philips = None
    for name, (dwi, t1, bvalue) in SUBJECTS.items():
        folder = os.path.join(data_root(), name)
        placed = {}
        for register in (False, True):
            s = load_dwi_subject(os.path.join(folder, dwi), os.path.join(folder, t1), bvalue,
                                 register=register)
            mean = s.shell.mean(axis=-1)
            placed[register] = float(np.corrcoef(s.t1[s.mask], mean[s.mask])[0, 1])
        philips = s if philips is None else philips
        levels = [attenuation_level(s.shell[..., v]) for v in range(s.shell.shape[3])]
        rough = np.mean([roughness(s.shell[..., v], s.mask) for v in range(s.shell.shape[3])])
        # s.t1 is divided by its brain median, so this is the median over the robust maximum
        # (the brain's place under the scaling used before, which divided by the maximum).
        ratio = 1.0 / robust_max(np.where(s.mask, s.t1, 0.0))
        hr_levels = np.array(levels)
        ratios = []
        for scale in (2.0, 2.4, 3.0, 4.0):
            lr = degrade(np.moveaxis(s.shell, -1, 0), scale, kind="bicubic", n_spatial=3)
            ratios.append(np.array([attenuation_level(v) for v in lr]) / hr_levels)
        level_rows.append((name, ratios))
        rows.append((f"{name} b={bvalue}", np.mean(levels), rough, rough / np.mean(levels),
                     ratio, placed[False], placed[True]))
    print("| series | level | roughness | roughness / level | T1w brain median / robust max "
          "| corr(T1w, mean attenuation), header | registered |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.3f} | {r[2]:.3f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.3f} "
              f"| {r[6]:.3f} |")
    print("\n| LR level / HR level, min-max over the volumes | x2 | x2.4 | x3 | x4 |")
    print("|---|---|---|---|---|")
    for name, ratios in level_rows:
        print(f"| {name} | " + " | ".join(f"{r.min():.3f}-{r.max():.3f}" for r in ratios) + " |")
    sim = simulate_shells(philips, [1000, 1500, 2000, 2500, 3000], 4, seed=0)
    n = philips.shell.shape[3]
    print("\n| simulated from dwi-philips-3t | level | roughness | roughness / level |")
    print("|---|---|---|---|")
    for b in (1000, 1500, 2000, 2500, 3000):
        idx = [n + i for i in np.flatnonzero(sim.bvals[n:] == b)]
        level = np.mean([attenuation_level(sim.shell[..., i]) for i in idx])
        rough = np.mean([roughness(sim.shell[..., i], sim.mask) for i in idx])
        print(f"| b={b} | {level:.3f} | {rough:.3f} | {rough / level:.2f} |")


if __name__ == "__main__":
    main()
