#!/usr/bin/env python
"""How much can any method gain over cubic interpolation on an acquired dMRI series?
(issue 24; docs/benchmarks/dmri.md, "How much the noise leaves to gain").

    OMP_NUM_THREADS=1 python benchmarks/dmri_noise_ceiling.py \
        configs/eval_dmri_heldout_A_full.yaml configs/eval_dmri_heldout_B_full.yaml

The signal protocol scores a method against the acquired series, noise included. Whatever a
method knows, it cannot predict the part of that noise the low-resolution input did not
measure: the input holds about ``1 / f^3`` of the samples at a factor ``f`` per axis, so at
least ``(1 - 1 / f^3) sigma^2`` per voxel of the noise stays in any method's squared error.
Against cubic's own squared error ``e`` this bounds the PSNR gain over cubic by
``10 log10(e / ((1 - 1 / f^3) sigma^2))`` (an upper bound: it grants a method the noiseless
signal exactly).

``sigma`` is estimated twice inside the brain, and the smaller estimate (the higher ceiling)
is used: from pairs of b=0 volumes (``MAD(b0_i - b0_j) / sqrt(2)``; motion between them only
raises it) and from each scored volume's finest Haar band (the median of ``|HHH|`` over
2x2x2 blocks inside the eroded mask; edges only raise it). MAD here is 1.4826 times the
median absolute deviation (the standard deviation of Gaussian noise). Where a scanner
interpolated the series (zero-filled its k-space), the finest band holds no noise and the
ceiling is too high; the top-band power ratio column says whether that is the case.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

MAD_TO_SIGMA = 1.4826


def sigma_from_b0_pairs(series: np.ndarray, b0: np.ndarray, mask: np.ndarray) -> float:
    """Noise ``sigma`` from differences of consecutive b=0 volumes ``(X, Y, Z, N)`` inside
    ``mask``; NaN with fewer than two b=0 volumes."""
    if len(b0) < 2:
        return float("nan")
    diffs = [series[..., b0[k + 1]][mask] - series[..., b0[k]][mask]
             for k in range(len(b0) - 1)]
    d = np.concatenate(diffs).astype(np.float64)
    return float(MAD_TO_SIGMA * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def sigma_from_finest_band(volume: np.ndarray, mask: np.ndarray) -> float:
    """Noise ``sigma`` of one volume ``(X, Y, Z)`` from its Haar HHH coefficients over the
    2x2x2 blocks that lie inside ``mask`` eroded once."""
    from scipy.ndimage import binary_erosion

    inside = binary_erosion(mask)
    n = [s - s % 2 for s in volume.shape]
    v = volume[:n[0], :n[1], :n[2]].astype(np.float64)
    m = inside[:n[0], :n[1], :n[2]]
    blocks = v.reshape(n[0] // 2, 2, n[1] // 2, 2, n[2] // 2, 2)
    sign = np.array([1.0, -1.0])
    hhh = np.einsum("aibjck,i,j,k->abc", blocks, sign, sign, sign) / np.sqrt(8.0)
    keep = m.reshape(n[0] // 2, 2, n[1] // 2, 2, n[2] // 2, 2).all(axis=(1, 3, 5))
    return float(MAD_TO_SIGMA * np.median(np.abs(hhh[keep])))


def top_band_ratio(volume: np.ndarray) -> float:
    """The smallest, over the three axes, of the mean power at 90-100 % of the Nyquist
    frequency along the axis over that at 70-80 %. Near 1 where noise fills the top of the
    spectrum; near 0 where the scanner interpolated (zero-filled) along an axis, so that the
    finest Haar band holds no noise and ``sigma`` would be underestimated."""
    power = np.abs(np.fft.fftn(volume.astype(np.float64))) ** 2
    ratios = []
    for axis, n in enumerate(volume.shape):
        k = np.abs(np.fft.fftfreq(n)) * 2.0  # 1 = Nyquist
        profile = power.mean(axis=tuple(a for a in range(3) if a != axis))
        top, below = profile[k >= 0.9], profile[(k >= 0.7) & (k < 0.8)]
        ratios.append(float(top.mean() / below.mean()))
    return min(ratios)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("configs", nargs="+", help="signal-protocol dMRI evaluation configs")
    args = parser.parse_args(argv)

    from mrisr.config import from_dict, load_yaml
    from mrisr.degradation import degrade_volume, spline_resize
    from mrisr.evaluation.dmri import DmriEvaluateConfig, load_series_cases

    header = None
    for path in args.configs:
        cfg = from_dict(DmriEvaluateConfig, load_yaml(path), source=path)
        if header is None:
            scales = "".join(f" ceiling x{s:g} (dB) |" for s in cfg.scales)
            print(f"| series | sigma (b=0 pairs / finest band) | top-band power ratio | "
                  f"cubic RMSE / sigma at x2 |{scales}")
            print("|---|---|---|---|" + "---|" * len(cfg.scales))
            header = cfg.scales
        for case in load_series_cases(cfg.dmri, cfg.volumes):
            shape = case.hr.shape[:3]
            hr = case.hr[..., case.scored]
            s_b0 = sigma_from_b0_pairs(case.hr, case.b0, case.mask)
            s_band = np.array([sigma_from_finest_band(hr[..., k], case.mask)
                               for k in range(hr.shape[3])])
            sigma = np.fmin(s_band, s_b0)  # per scored volume; NaN b=0 estimate ignored
            ceilings, ratio2 = [], None
            for scale in cfg.scales:
                lr, _ = degrade_volume(hr, case.affine, scale, cfg.degradation)
                gains = []
                for k in range(hr.shape[3]):
                    cubic = spline_resize(lr[..., k], shape, order=3)
                    err = float(np.mean((cubic[case.mask] - hr[..., k][case.mask]) ** 2,
                                        dtype=np.float64))
                    floor = (1.0 - 1.0 / float(scale) ** 3) * sigma[k] ** 2
                    gains.append(10.0 * np.log10(err / floor))
                    if scale == 2.0 and k == 0:
                        ratio2 = np.sqrt(err) / sigma[k]
                ceilings.append(float(np.mean(gains)))
            ratio = f"{ratio2:.2f}" if ratio2 is not None else "-"
            print(f"| {case.subject} | {s_b0:.1f} / {np.median(s_band):.1f} | "
                  f"{top_band_ratio(hr[..., 0]):.2f} | {ratio} | " +
                  " | ".join(f"{c:+.2f}" for c in ceilings) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
