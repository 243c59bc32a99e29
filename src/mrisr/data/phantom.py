"""Deterministic multi-contrast brain phantom: the sample data shipped with mrisr.

The phantom stands in for real scans in examples, tests and demos, so it is built to have what
super-resolution models react to: real tissue edges with sub-voxel partial volume, a folded
cortex, small focal lesions, co-registered T1w/T2w/PD contrasts, a smooth bias field and Rician
noise. Everything is a pure function of ``(shape, voxel_size, seed, ...)``: the same arguments
give bit-identical arrays.

Geometry. Voxel ``i`` of an axis with ``N`` voxels of size ``v`` mm sits at world position
``(i - (N - 1) / 2) * v`` (RAS, centred on the origin), i.e. at the normalised coordinate
``-1 + (2 i + 1) / N`` of :mod:`mrisr.grid`. Anatomy is defined in a brain frame
``p = x / semi_axes`` (unit sphere = brain surface); the semi-axes keep realistic brain
proportions and are scaled to fill most of the field of view, so every grid shows the same brain.

Labels: 0 background, 1 CSF, 2 grey matter (GM), 3 white matter (WM), 4 lesion.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from mrisr.errors import InputError

__all__ = [
    "BrainPhantom", "DwiPhantom", "TISSUE_PARAMETERS", "SEQUENCES", "spin_echo",
    "phantom_affine", "fibonacci_directions", "make_brain_phantom", "make_brain_phantom_2d",
    "make_dwi_phantom",
]

# (PD, T1 ms, T2 ms) at 3 T, rows indexed by label (0 = background).
# WM/GM T1 and T2: Wansapura et al., "NMR relaxation times in the human brain at 3.0 T",
# JMRI 9:531-538 (1999): WM 832/80 ms, GM 1331/110 ms. PD as water content relative to CSF
# (WM ~0.69, GM ~0.80; e.g. Neeb et al., NeuroImage 31 (2006)). CSF (T1 ~4 s, T2 ~2 s) and an
# MS-like lesion (T1 ~1.5 s, T2 ~200 ms, PD ~0.85) are representative values from the ranges
# reported in the literature, not measurements of one study.
TISSUE_PARAMETERS = np.array([
    [0.00, 1.0, 1.0],        # background (no signal)
    [1.00, 4000.0, 2000.0],  # CSF
    [0.80, 1331.0, 110.0],   # GM
    [0.69, 832.0, 80.0],     # WM
    [0.85, 1500.0, 200.0],   # lesion
])
# Spin-echo (TR, TE) in ms for each contrast.
SEQUENCES = {"t1w": (500.0, 15.0), "t2w": (4000.0, 100.0), "pd": (4000.0, 15.0)}
_B0_SEQUENCE = (4000.0, 80.0)  # b = 0 of the DWI is an ordinary T2-weighted spin echo

# Brain shape and cortex, in brain-frame units (1 = brain surface).
_REFERENCE_SEMI_AXES_MM = np.array([70.0, 85.0, 60.0])  # adult brain half-extents (LR, AP, SI)
_FOV_FILL = 0.88      # the brain spans this fraction of the tightest in-plane half-FOV
_PIAL = 0.96          # pial surface at gyral crowns; a thin CSF rim lies between it and 1
_CORTEX = 0.07        # GM ribbon thickness (~5-6 mm)
_SULCUS_DEPTH = 0.20  # how far sulci push the pial surface inwards
_SULCUS_WIDTH = 0.4   # sulcal width, in units of the folding noise's standard deviation
_FOLD_NODES, _FOLD_SIGMA = 48, 1.0  # folding lattice over p in [-1.25, 1.25]: gyri ~1-2 cm
_PV_SIGMA = 0.6       # partial-volume blur, voxels
_DIFFUSIVITY = {      # eigenvalues (mm^2/s)
    "wm": (1.5e-3, 0.375e-3),   # MD 0.75e-3, FA 0.71
    "lesion": (1.4e-3, 0.6e-3),  # demyelination: higher MD, lower FA
    "gm": 0.8e-3, "csf": 3.0e-3,
}


def spin_echo(pd, t1, t2, tr: float, te: float):
    """Spin-echo signal ``PD * (1 - exp(-TR/T1)) * exp(-TE/T2)``; times in ms, broadcasts."""
    return pd * (1.0 - np.exp(-tr / t1)) * np.exp(-te / t2)


@dataclass(frozen=True)
class BrainPhantom:
    """Co-registered structural contrasts on one grid.

    Attributes:
        t1w, t2w, pd: float32 images of shape ``shape`` (``(X, Y, Z)``, or ``(H, W)`` for the 2D
            phantom), each scaled so its maximum is 1.
        labels: uint8, same shape; 0 background, 1 CSF, 2 GM, 3 WM, 4 lesion.
        brain_mask: bool, same shape; ``labels > 0``.
        affine: float64 ``(4, 4)`` voxel-to-world (RAS, mm) affine.
    """

    t1w: np.ndarray
    t2w: np.ndarray
    pd: np.ndarray
    labels: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class DwiPhantom:
    """Single-shell diffusion phantom with its ground truth.

    Attributes:
        dwi: float32 ``(X, Y, Z, N)``, NIfTI-like volume-last layout (not channel-first), with
            ``N = n_b0 + n_directions``; b = 0 volumes first; scaled so the maximum is 1.
        bvals: float64 ``(N,)`` in s/mm^2.
        bvecs: float64 ``(3, N)`` (FSL file layout): unit vectors for b > 0, zeros for b = 0,
            expressed along the voxel axes (== RAS here, as the affine is diagonal).
        t1w: float32 ``(X, Y, Z)`` T1-weighted image of the same anatomy on the DWI grid.
        brain_mask: bool ``(X, Y, Z)``. labels: uint8 ``(X, Y, Z)``, as in :class:`BrainPhantom`.
        affine: float64 ``(4, 4)`` RAS affine.
        tensors: float32 ``(X, Y, Z, 3, 3)`` diffusion tensors in mm^2/s; with ``noise=0`` the
            signal obeys ``S = S0 exp(-b g^T D g)`` exactly in every voxel.
        fa: float32 ``(X, Y, Z)`` fractional anisotropy of ``tensors``.
    """

    dwi: np.ndarray
    bvals: np.ndarray
    bvecs: np.ndarray
    t1w: np.ndarray
    brain_mask: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    tensors: np.ndarray
    fa: np.ndarray


def phantom_affine(shape, voxel_size) -> np.ndarray:
    """RAS ``(4, 4)`` affine with spacing ``voxel_size`` (mm), grid centred on the world origin."""
    shape, voxel_size = np.asarray(shape, float), np.asarray(voxel_size, float)
    affine = np.diag([*voxel_size, 1.0])
    affine[:3, 3] = -(shape - 1) / 2 * voxel_size
    return affine


def fibonacci_directions(n: int) -> np.ndarray:
    """``(n, 3)`` unit vectors spread evenly over the upper hemisphere (golden spiral).

    A hemisphere suffices because diffusion signal is antipodally symmetric.
    """
    i = np.arange(n)
    z = 1.0 - (i + 0.5) / n
    r = np.sqrt(1.0 - z * z)
    phi = i * np.pi * (3.0 - np.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _bspline_weights(x: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Cubic B-spline basis ``(len(x), len(nodes))`` on uniformly spaced nodes."""
    t = np.abs(x[:, None] - nodes[None, :]) / (nodes[1] - nodes[0])
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def _smooth_noise(rng, axes_p, n_nodes: int, sigma: float) -> np.ndarray:
    """Band-limited random field (lattice scaled to unit std) sampled on the grid ``axes_p``.

    Smoothing a fixed lattice in the brain frame (instead of noise on the voxel grid) makes the
    anatomy independent of the sampling grid, and the separable spline keeps it cheap.
    """
    lattice = gaussian_filter(rng.standard_normal((n_nodes,) * 3), sigma, mode="wrap")
    lattice /= lattice.std()
    nodes = np.linspace(-1.25, 1.25, n_nodes)
    field = lattice
    for p in axes_p:  # contract one lattice axis per step; the sampled axis moves to the back
        field = np.tensordot(field, _bspline_weights(p, nodes), axes=(0, 1))
    return field


def _ellipsoid(px, py, pz, centre, radii) -> np.ndarray:
    return sum(((q - c) / r) ** 2 for q, c, r in zip((px, py, pz), centre, radii)) < 1.0


def _anatomy(shape, voxel_size, rng):
    """Labels and brain-frame coordinates (broadcastable ``px, py, pz``) for one grid."""
    shape, voxel_size = tuple(int(n) for n in shape), np.asarray(voxel_size, float)
    if len(shape) != 3 or voxel_size.shape != (3,) or min(shape) < 1 or np.any(voxel_size <= 0):
        raise InputError(f"phantom needs 3 positive sizes and voxel sizes, got {shape}, "
                         f"{tuple(voxel_size)}")
    half_fov = np.asarray(shape) * voxel_size / 2
    fit = [h / r for h, r, n in zip(half_fov, _REFERENCE_SEMI_AXES_MM, shape) if n > 1]
    semi_axes = _REFERENCE_SEMI_AXES_MM * _FOV_FILL * min(fit)
    axes_p = [(np.arange(n) - (n - 1) / 2) * v / a for n, v, a in zip(shape, voxel_size, semi_axes)]
    px, py, pz = np.ix_(*axes_p)
    r = np.sqrt(px**2 + py**2 + pz**2)

    # Sulci run along the zero level set of smooth noise: narrow creases between broad gyri.
    noise = _smooth_noise(rng, axes_p, _FOLD_NODES, _FOLD_SIGMA)
    depth = r + _SULCUS_DEPTH * np.exp(-((noise / _SULCUS_WIDTH) ** 2))
    # The interhemispheric fissure reads as "near the surface" along the midline above the
    # ventricles, so it gets the same CSF / GM-lining / WM layering as a sulcus.
    fissure = _PIAL + 0.015 - np.abs(px) - 2.0 * np.maximum(0.0, 0.2 - pz)
    depth = np.maximum(depth, fissure)

    labels = np.zeros(shape, np.uint8)
    labels[r < 1.0] = 1
    labels[(r < 1.0) & (depth < _PIAL)] = 2
    labels[(r < 1.0) & (depth < _PIAL - _CORTEX)] = 3
    for sx in (-1.0, 1.0):
        labels[_ellipsoid(px, py, pz, (0.14 * sx, -0.12, -0.06), (0.09, 0.14, 0.11))] = 2  # thalami
        bend = pz - 0.6 * (py - 0.05) ** 2  # lateral ventricles arch over the thalami
        labels[_ellipsoid(px, py, bend, (0.11 * sx, 0.05, 0.02), (0.06, 0.36, 0.12))] = 1
    labels[_ellipsoid(px, py, pz, (0.0, -0.08, -0.04), (0.015, 0.13, 0.10))] = 1  # 3rd ventricle

    # Lesions in deep WM, between the deep structures (|p| < 0.45) and the WM under the deepest
    # sulci (|p| ~ 0.69), near the mid axial plane so that the central slice shows them.
    for _ in range(2):
        angle = rng.uniform(0.15, 0.85) * np.pi * rng.choice([-1.0, 1.0])
        radius = rng.uniform(0.55, 0.62)
        centre = (radius * np.sin(angle), radius * np.cos(angle), rng.uniform(-0.03, 0.03))
        lesion = _ellipsoid(px, py, pz, centre, (rng.uniform(0.05, 0.07),) * 3)
        labels[lesion & (labels == 3)] = 4
    return labels, (px, py, pz), semi_axes


def _partial_volume(image: np.ndarray) -> np.ndarray:
    """Blur a piecewise-constant map so edges carry sub-voxel partial volume (no aliasing)."""
    sigma = [_PV_SIGMA if n > 1 else 0.0 for n in image.shape[:3]] + [0.0] * (image.ndim - 3)
    return gaussian_filter(image, sigma, mode="nearest")


def _bias_field(rng, labels_shape, p) -> np.ndarray:
    axes_p = [np.ravel(q) for q in p]
    return np.exp(0.08 * _smooth_noise(rng, axes_p, 6, 0.0)).reshape(labels_shape)


def _add_rician(image: np.ndarray, noise: float, rng) -> np.ndarray:
    """Magnitude of complex Gaussian noise, std ``noise * max(image)``, per real channel."""
    if noise <= 0:
        return image
    sigma = noise * float(image.max())
    real = image + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag)


def _structural(labels, bias, tr, te, noise, rng) -> np.ndarray:
    lut = spin_echo(*TISSUE_PARAMETERS.T, tr, te).astype(np.float32)
    image = _add_rician(_partial_volume(lut[labels]) * bias, noise, rng)
    return (image / image.max()).astype(np.float32)


def _rngs(seed: int):
    """Independent streams, so anatomy does not change with the noise level."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2)]


def make_brain_phantom(shape=(96, 112, 80), voxel_size=(2.0, 2.0, 2.0), seed: int = 0,
                       noise: float = 0.01) -> BrainPhantom:
    """Build the 3D multi-contrast brain phantom.

    Args:
        shape: grid size ``(X, Y, Z)`` (axes L->R, P->A, I->S).
        voxel_size: voxel spacing in mm per axis.
        seed: controls cortical folding, lesions, bias field and noise.
        noise: Rician noise std relative to each image's maximum; 0 gives clean images.

    Returns:
        :class:`BrainPhantom` with ``(X, Y, Z)`` arrays and a ``(4, 4)`` RAS affine.
    """
    anatomy_rng, noise_rng = _rngs(seed)
    labels, p, _ = _anatomy(shape, voxel_size, anatomy_rng)
    bias = _bias_field(anatomy_rng, labels.shape, p).astype(np.float32)
    images = {name: _structural(labels, bias, tr, te, noise, noise_rng)
              for name, (tr, te) in SEQUENCES.items()}
    return BrainPhantom(**images, labels=labels, brain_mask=labels > 0,
                        affine=phantom_affine(shape, voxel_size))


def make_brain_phantom_2d(shape=(192, 192), voxel_size=(1.0, 1.0), seed: int = 0,
                          noise: float = 0.01, slice_thickness: float | None = None
                          ) -> BrainPhantom:
    """One axial slice (the plane ``z = 0``) of the 3D phantom anatomy, at in-plane size ``shape``.

    Its labels equal the central slice of an odd-depth :func:`make_brain_phantom` with the same
    in-plane grid and seed; the images lack through-plane partial volume. Arrays are
    ``(H, W)`` = ``(X, Y)``; the affine describes a single-slice volume of thickness
    ``slice_thickness`` mm (default: the first in-plane voxel size).
    """
    thickness = float(voxel_size[0] if slice_thickness is None else slice_thickness)
    vol = make_brain_phantom((*shape, 1), (*voxel_size, thickness), seed=seed, noise=noise)
    squeeze = {k: getattr(vol, k)[..., 0] for k in ("t1w", "t2w", "pd", "labels", "brain_mask")}
    return BrainPhantom(**squeeze, affine=vol.affine)


def make_dwi_phantom(shape=(48, 56, 40), voxel_size=(2.5, 2.5, 2.5), n_directions: int = 16,
                     bvalue: float = 1000.0, n_b0: int = 1, seed: int = 0,
                     noise: float = 0.0) -> DwiPhantom:
    """Build a single-shell DWI phantom with ground-truth diffusion tensors.

    WM fibres follow a smooth field that circles the ventricles in the axial plane and tilts
    towards superior-inferior near the centre; GM and CSF are isotropic. Partial volume mixes the
    tensors (not the signals), so the single-tensor model is exact in every voxel.

    Args:
        shape: grid size ``(X, Y, Z)``. voxel_size: spacing in mm.
        n_directions: number of b > 0 gradient directions (golden-spiral hemisphere).
        bvalue: b-value of the shell in s/mm^2. n_b0: number of leading b = 0 volumes.
        seed: as in :func:`make_brain_phantom`.
        noise: Rician noise std relative to the maximum b = 0 signal; 0 gives the exact model.

    Returns:
        :class:`DwiPhantom`; ``dwi`` is ``(X, Y, Z, n_b0 + n_directions)``.
    """
    anatomy_rng, noise_rng = _rngs(seed)
    labels, (px, py, pz), semi_axes = _anatomy(shape, voxel_size, anatomy_rng)
    bias = _bias_field(anatomy_rng, labels.shape, (px, py, pz))

    # Tangent of the axial ellipses plus a positive S-I part: smooth even on the central axis.
    fibre = np.stack(np.broadcast_arrays(-semi_axes[0] * py, semi_axes[1] * px,
                                         0.35 * semi_axes[2] * (1.0 + 0.5 * pz)), axis=-1)
    fibre /= np.linalg.norm(fibre, axis=-1, keepdims=True)
    outer = fibre[..., :, None] * fibre[..., None, :]
    eye = np.eye(3)
    iso = np.zeros(5)
    iso[[1, 2]] = _DIFFUSIVITY["csf"], _DIFFUSIVITY["gm"]
    tensors = iso[labels][..., None, None] * eye
    for label, name in ((3, "wm"), (4, "lesion")):
        par, perp = _DIFFUSIVITY[name]
        sel = labels == label
        tensors[sel] = perp * eye + (par - perp) * outer[sel]
    tensors = _partial_volume(tensors)

    b0_lut = spin_echo(*TISSUE_PARAMETERS.T, *_B0_SEQUENCE)
    s0 = _partial_volume(b0_lut[labels]) * bias
    g = fibonacci_directions(n_directions)
    bvecs = np.concatenate([np.zeros((n_b0, 3)), g]).T
    bvals = np.concatenate([np.zeros(n_b0), np.full(n_directions, float(bvalue))])
    adc = np.einsum("in,xyzij,jn->xyzn", bvecs, tensors, bvecs, optimize=True)
    dwi = (s0[..., None] * np.exp(-bvals * adc)).astype(np.float32)
    dwi = _add_rician(dwi / dwi.max(), noise, noise_rng)
    dwi /= dwi.max()

    t1w = _structural(labels, bias.astype(np.float32), *SEQUENCES["t1w"], noise, noise_rng)
    evals = np.linalg.eigvalsh(tensors)
    md = evals.mean(-1, keepdims=True)
    norm = np.sqrt((evals**2).sum(-1))
    fa = np.sqrt(1.5 * ((evals - md) ** 2).sum(-1)) / np.where(norm > 0, norm, 1.0)
    return DwiPhantom(dwi=dwi.astype(np.float32), bvals=bvals, bvecs=bvecs, t1w=t1w,
                      brain_mask=labels > 0, labels=labels,
                      affine=phantom_affine(shape, voxel_size),
                      tensors=tensors.astype(np.float32), fa=fa.astype(np.float32))


def write_phantom(folder, seed: int = 0, overwrite: bool = False) -> list:
    """Write the default phantoms as NIfTI files (float32, atomically) into ``folder``.

    Files: ``t1w.nii.gz``, ``t2w.nii.gz``, ``pd.nii.gz``, ``brain_mask.nii.gz`` (structural
    grid), ``dwi.nii.gz`` with ``dwi.bval``/``dwi.bvec`` and ``dwi_t1w.nii.gz`` (diffusion grid).
    Returns the written paths.
    """
    from pathlib import Path

    from mrisr.io.atomic import check_output_path
    from mrisr.io.dwi import write_bvals, write_bvecs
    from mrisr.io.nifti import save_nifti

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    structural = make_brain_phantom(seed=seed)
    dwi = make_dwi_phantom(seed=seed)
    images = {"t1w.nii.gz": (structural.t1w, structural.affine),
              "t2w.nii.gz": (structural.t2w, structural.affine),
              "pd.nii.gz": (structural.pd, structural.affine),
              "brain_mask.nii.gz": (structural.brain_mask.astype(np.float32), structural.affine),
              "dwi.nii.gz": (dwi.dwi, dwi.affine),
              "dwi_t1w.nii.gz": (dwi.t1w, dwi.affine)}
    names = [*images, "dwi.bval", "dwi.bvec"]
    for name in names:
        check_output_path(out / name, overwrite=overwrite)
    written = []
    for name, (data, affine) in images.items():
        written.append(save_nifti(data, affine, out / name))
    write_bvals(out / "dwi.bval", dwi.bvals)
    write_bvecs(out / "dwi.bvec", dwi.bvecs)
    return written + [out / "dwi.bval", out / "dwi.bvec"]
