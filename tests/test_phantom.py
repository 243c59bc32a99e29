"""Tests for the embedded brain phantom (mrisr.data.phantom)."""
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import ConvexHull

from mrisr.data.phantom import (
    SEQUENCES, TISSUE_PARAMETERS, BrainPhantom, DwiPhantom, fibonacci_directions,
    make_brain_phantom, make_brain_phantom_2d, make_dwi_phantom, phantom_affine, spin_echo,
)
from mrisr.errors import InputError

CSF, GM, WM, LESION = 1, 2, 3, 4
SMALL = (40, 48, 32)


@pytest.fixture(scope="module")
def noisy():
    return make_brain_phantom()


@pytest.fixture(scope="module")
def clean():
    return make_brain_phantom(noise=0.0)


@pytest.fixture(scope="module")
def dwi():
    return make_dwi_phantom(noise=0.0)


def _pure(labels, label, iterations=1):
    """Voxels of ``label`` whose neighbourhood is the same tissue (free of partial volume)."""
    return ndimage.binary_erosion(labels == label, iterations=iterations)


def _fields(obj):
    return {k: v for k, v in vars(obj).items()}


# --- determinism -------------------------------------------------------------------------------

def test_same_seed_is_bit_identical():
    for make in (lambda: make_brain_phantom(SMALL, seed=3),
                 lambda: make_dwi_phantom(SMALL, n_directions=6, seed=3, noise=0.02)):
        a, b = _fields(make()), _fields(make())
        for key in a:
            assert a[key].dtype == b[key].dtype
            assert np.array_equal(a[key], b[key]), key


def test_different_seed_changes_anatomy_and_images():
    a, b = make_brain_phantom(SMALL, seed=0), make_brain_phantom(SMALL, seed=1)
    assert (a.labels != b.labels).mean() > 0.01
    for key in ("t1w", "t2w", "pd"):
        assert not np.allclose(getattr(a, key), getattr(b, key), atol=1e-3)


def test_noise_level_does_not_change_anatomy():
    a, b = make_brain_phantom(SMALL, noise=0.0), make_brain_phantom(SMALL, noise=0.05)
    assert np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.t1w, b.t1w)


# --- shapes, dtypes, geometry ------------------------------------------------------------------

def test_shapes_dtypes_and_normalisation(noisy):
    assert isinstance(noisy, BrainPhantom)
    shape = (96, 112, 80)
    for key in ("t1w", "t2w", "pd"):
        img = getattr(noisy, key)
        assert img.shape == shape and img.dtype == np.float32
        assert img.max() == pytest.approx(1.0) and img.min() >= 0
    assert noisy.labels.shape == shape and noisy.labels.dtype == np.uint8
    assert set(np.unique(noisy.labels)) == {0, CSF, GM, WM, LESION}
    assert noisy.brain_mask.dtype == bool and noisy.brain_mask.shape == shape
    assert noisy.affine.shape == (4, 4) and noisy.affine.dtype == np.float64


def test_affine_is_ras_centred_with_requested_spacing():
    shape, vox = (10, 12, 7), (1.5, 2.0, 3.0)
    aff = make_brain_phantom(shape, vox, noise=0.0).affine
    np.testing.assert_allclose(aff[:3, :3], np.diag(vox))
    centre = aff @ np.array([*(np.array(shape) - 1) / 2, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-12)
    np.testing.assert_allclose(aff, phantom_affine(shape, vox))


def test_rejects_bad_geometry():
    with pytest.raises(InputError):
        make_brain_phantom((32, 32), (1.0, 1.0))
    with pytest.raises(InputError):
        make_brain_phantom((8, 8, 8), (1.0, 0.0, 1.0))


def test_brain_mask_covers_labels_and_fills_the_fov(clean):
    assert np.array_equal(clean.brain_mask, clean.labels > 0)
    # Noise-free signal lives inside the (slightly dilated, for partial volume) mask.
    outside = ~ndimage.binary_dilation(clean.brain_mask, np.ones((3, 3, 3)), iterations=2)
    assert np.all(clean.t1w[outside] == 0)
    for axis, n in enumerate(clean.labels.shape):
        extent = np.flatnonzero(clean.brain_mask.any(axis=tuple(i for i in range(3) if i != axis)))
        assert 0.75 * n < extent.size < n  # most of the FOV, but not touching its edges


# --- contrast ----------------------------------------------------------------------------------

def test_spin_echo_equation():
    expected = 0.5 * (1 - np.exp(-1)) * np.exp(-1)
    assert spin_echo(0.5, 1000.0, 100.0, 1000.0, 100.0) == pytest.approx(expected)
    assert spin_echo(1.0, 1000.0, 100.0, 1e9, 0.0) == pytest.approx(1.0)


def test_tissue_parameters_are_physically_ordered():
    pd, t1, t2 = TISSUE_PARAMETERS[[WM, GM, CSF]].T
    # Water content and both relaxation times grow from white matter through grey matter to CSF.
    for values in (pd, t1, t2):
        assert np.all(np.diff(values) > 0)
    # Relaxation: T2 never exceeds T1. A lesion holds more free water than the WM around it.
    assert np.all(TISSUE_PARAMETERS[1:, 2] < TISSUE_PARAMETERS[1:, 1])
    assert np.all(TISSUE_PARAMETERS[LESION] > TISSUE_PARAMETERS[WM])


def test_tissue_contrast_ordering(clean):
    med = {key: {lab: np.median(getattr(clean, key)[_pure(clean.labels, lab)])
                 for lab in (CSF, GM, WM)} for key in SEQUENCES}
    lesion = clean.labels == LESION
    assert lesion.any()
    assert med["t1w"][WM] > med["t1w"][GM] > med["t1w"][CSF]
    assert med["t2w"][CSF] > med["t2w"][GM] > med["t2w"][WM]
    assert np.median(clean.t2w[lesion]) > 1.5 * med["t2w"][WM]
    assert med["pd"][GM] > med["pd"][WM]
    # Tissue ratios follow the signal equation up to the weak bias field.
    theory = spin_echo(*TISSUE_PARAMETERS.T, *SEQUENCES["t1w"])
    assert med["t1w"][WM] / med["t1w"][GM] == pytest.approx(theory[WM] / theory[GM], rel=0.1)


def test_contrasts_share_one_bias_field_and_follow_the_signal_equation(clean):
    """The bias field multiplies the three contrasts alike, so a ratio of two contrasts is flat
    inside a tissue although each image drifts, and that ratio compared between tissues is what
    the spin-echo equation gives for the tissue parameters (the bias and normalisation cancel)."""
    theory = {key: spin_echo(*TISSUE_PARAMETERS.T, *SEQUENCES[key]) for key in SEQUENCES}
    for key in ("t2w", "pd"):
        ratio = {}
        for lab in (CSF, GM, WM):
            pure = _pure(clean.labels, lab, iterations=2)
            t1w = clean.t1w[pure].astype(np.float64)
            r = getattr(clean, key)[pure] / t1w
            assert t1w.std() > 0.01 * t1w.mean()  # the bias field is there ...
            assert r.std() < 0.01 * r.mean()      # ... and cancels in the ratio
            ratio[lab] = np.median(r)
        expected = {lab: theory[key][lab] / theory["t1w"][lab] for lab in (CSF, GM, WM)}
        for lab in (CSF, GM):
            assert ratio[lab] / ratio[WM] == pytest.approx(expected[lab] / expected[WM], rel=0.01)


def test_noise_is_small_and_rician(noisy):
    far = ~ndimage.binary_dilation(noisy.brain_mask, iterations=4)
    background = noisy.t1w[far]
    # Magnitude of complex Gaussian noise: positive with mean sigma * sqrt(pi / 2).
    assert background.min() >= 0
    assert 0.5 * 0.01 * np.sqrt(np.pi / 2) < background.mean() < 2 * 0.01 * np.sqrt(np.pi / 2)


# --- anatomy -----------------------------------------------------------------------------------

def _solidity(region2d):
    """Area over convex-hull area: 1 for convex shapes, lower for folded ones."""
    return region2d.sum() / ConvexHull(np.argwhere(region2d)).volume


def _isoperimetric(region2d):
    """Perimeter^2 / (4 pi area), with the perimeter counted in boundary pixels."""
    perimeter = (region2d & ~ndimage.binary_erosion(region2d)).sum()
    return perimeter**2 / (4 * np.pi * region2d.sum())


def test_gm_wm_boundary_is_folded(clean):
    mid = clean.labels[:, :, clean.labels.shape[2] // 2]
    # Fill the deep structures so that only the cortical boundary can make WM non-convex.
    wm = ndimage.binary_fill_holes(np.isin(mid, (WM, LESION)))
    wm = ndimage.label(wm)[0] == np.argmax(np.bincount(ndimage.label(wm)[0].ravel())[1:]) + 1
    # Control: the smooth outer brain boundary, measured the same way.
    assert _solidity(wm) < 0.95 and _solidity(mid > 0) > 0.99
    assert _isoperimetric(wm) > 2.0 * _isoperimetric(mid > 0)


def test_lesions_are_small_and_inside_white_matter(clean):
    comps, n = ndimage.label(clean.labels == LESION)
    assert 1 <= n <= 2
    sizes = np.bincount(comps.ravel())[1:]
    assert np.all(sizes < 0.01 * clean.brain_mask.sum())
    # Surrounded by WM: the one-voxel shell around each lesion is mostly WM.
    shell = ndimage.binary_dilation(comps > 0) & (comps == 0)
    assert np.mean(clean.labels[shell] == WM) > 0.9


def test_edges_have_subvoxel_partial_volume(clean):
    img, labels = clean.t1w, clean.labels
    edge = ndimage.binary_dilation(labels > 0) & ~ndimage.binary_erosion(labels > 0)
    values = img[edge]
    wm_level = np.median(img[_pure(labels, WM)])
    # Intermediate values on the brain boundary, and no full-height jumps between neighbours.
    assert np.mean((values > 0.05 * wm_level) & (values < 0.95 * wm_level)) > 0.5
    for axis in range(3):
        assert np.abs(np.diff(img, axis=axis)).max() < 0.75 * img.max()


def test_2d_phantom_is_the_central_axial_plane():
    p2 = make_brain_phantom_2d((64, 72), (3.0, 3.0), seed=2, noise=0.0)
    assert p2.t1w.shape == (64, 72) and p2.labels.shape == (64, 72)
    assert p2.t1w.dtype == np.float32 and p2.labels.dtype == np.uint8
    np.testing.assert_allclose(p2.affine[:3, :3], np.diag([3.0, 3.0, 3.0]))
    # A thick-slab 3D phantom (z never limits the fit) has the same central plane.
    p3 = make_brain_phantom((64, 72, 33), (3.0, 3.0, 6.0), seed=2, noise=0.0)
    assert np.mean(p3.labels[:, :, 16] == p2.labels) > 0.999
    assert {CSF, GM, WM, LESION} <= set(np.unique(p2.labels))


def test_2d_default():
    p2 = make_brain_phantom_2d()
    assert p2.t1w.shape == (192, 192) and p2.pd.max() == pytest.approx(1.0)
    np.testing.assert_allclose(np.sqrt((p2.affine[:3, :3] ** 2).sum(0)), 1.0)


# --- diffusion ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [6, 16, 32, 64])
def test_gradient_directions_are_unit_and_well_spread(n):
    g = fibonacci_directions(n)
    np.testing.assert_allclose(np.linalg.norm(g, axis=1), 1.0, atol=1e-12)
    cos = np.abs(g @ g.T)  # antipodal directions are equivalent in diffusion MRI
    np.fill_diagonal(cos, 0.0)
    min_angle = np.arccos(cos.max())
    assert min_angle > 0.5 * np.sqrt(2 * np.pi / n)  # half the ideal spacing on a hemisphere


def test_dwi_layout(dwi):
    assert isinstance(dwi, DwiPhantom)
    shape, n = (48, 56, 40), 17
    assert dwi.dwi.shape == (*shape, n) and dwi.dwi.dtype == np.float32
    assert dwi.bvals.shape == (n,) and dwi.bvals.dtype == np.float64
    assert dwi.bvecs.shape == (3, n) and dwi.bvecs.dtype == np.float64
    assert dwi.bvals[0] == 0 and np.all(dwi.bvals[1:] == 1000.0)
    np.testing.assert_array_equal(dwi.bvecs[:, 0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(dwi.bvecs[:, 1:], axis=0), 1.0)
    assert dwi.t1w.shape == shape and dwi.t1w.dtype == np.float32
    assert dwi.tensors.shape == (*shape, 3, 3) and dwi.tensors.dtype == np.float32
    assert dwi.fa.shape == shape and dwi.labels.shape == shape
    np.testing.assert_allclose(np.sqrt((dwi.affine[:3, :3] ** 2).sum(0)), 2.5)
    assert dwi.dwi.max() == pytest.approx(1.0)
    b = make_dwi_phantom((8, 8, 8), n_directions=5, n_b0=2)
    assert b.dwi.shape == (8, 8, 8, 7) and np.all(b.bvals[:2] == 0)


def test_dwi_signal_decreases_with_b(dwi):
    brain = dwi.brain_mask
    b0, dw = dwi.dwi[..., 0][brain], dwi.dwi[..., 1:][brain]
    assert np.all(dw < b0[:, None])
    low = make_dwi_phantom(bvalue=500.0)
    assert np.all(low.dwi[..., 1:][brain] > dw)


def test_dwi_follows_tensor_model_exactly(dwi):
    g, b = dwi.bvecs.T, dwi.bvals
    design = np.column_stack([-b * g[:, 0] ** 2, -b * g[:, 1] ** 2, -b * g[:, 2] ** 2,
                              -2 * b * g[:, 0] * g[:, 1], -2 * b * g[:, 0] * g[:, 2],
                              -2 * b * g[:, 1] * g[:, 2], np.ones_like(b)])
    rng = np.random.default_rng(0)
    pure_wm = np.argwhere(_pure(dwi.labels, WM))
    anywhere = np.argwhere(dwi.brain_mask)  # partial-volume voxels must obey the model too
    voxels = np.concatenate([pure_wm[rng.choice(len(pure_wm), 20)],
                             anywhere[rng.choice(len(anywhere), 20)]])
    for v in map(tuple, voxels):
        coef = np.linalg.lstsq(design, np.log(dwi.dwi[v].astype(np.float64)), rcond=None)[0]
        xx, yy, zz, xy, xz, yz = coef[:6]
        fitted = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        truth = dwi.tensors[v].astype(np.float64)
        assert np.linalg.norm(fitted - truth) < 1e-4 * np.linalg.norm(truth)


def test_tensor_field_values(dwi):
    d = dwi.tensors.astype(np.float64)
    np.testing.assert_allclose(d, np.swapaxes(d, -1, -2))
    assert np.linalg.eigvalsh(d).min() >= -1e-12
    md = np.trace(d, axis1=-2, axis2=-1) / 3
    wm = _pure(dwi.labels, WM)
    assert 0.6 < np.median(dwi.fa[wm]) < 0.75
    assert np.percentile(dwi.fa[wm], 5) > 0.55
    assert np.median(md[wm]) == pytest.approx(0.75e-3, rel=0.03)
    # GM and CSF structures are thin on this grid: "pure" = the whole 3x3x3 block is that tissue.
    pure_gm = ndimage.uniform_filter((dwi.labels == GM).astype(float), 3) > 0.999
    assert np.median(md[pure_gm]) == pytest.approx(0.8e-3, rel=0.03)
    assert np.all(dwi.fa[pure_gm] < 0.05)
    csf = ndimage.uniform_filter((dwi.labels == CSF).astype(float), 3) > 0.999
    assert csf.any() and np.median(md[csf]) == pytest.approx(3.0e-3, rel=0.03)


def test_fibre_orientation_is_smooth(dwi):
    e1 = np.linalg.eigh(dwi.tensors.astype(np.float64))[1][..., -1]
    wm = _pure(dwi.labels, WM)
    for axis in range(3):
        both = wm & np.roll(wm, -1, axis=axis)
        cos = np.abs((e1 * np.roll(e1, -1, axis=axis)).sum(-1))[both]
        angle = np.degrees(np.arccos(np.clip(cos, 0, 1)))
        assert np.median(angle) < 6.0 and angle.max() < 20.0  # per 2.5 mm step


def test_dwi_contrasts_share_the_anatomy(dwi):
    b0 = dwi.dwi[..., 0]
    med = {lab: (np.median(b0[_pure(dwi.labels, lab)]), np.median(dwi.t1w[_pure(dwi.labels, lab)]))
           for lab in (CSF, GM, WM)}
    assert med[CSF][0] > med[GM][0] > med[WM][0]  # b = 0 is T2-weighted
    assert med[WM][1] > med[GM][1] > med[CSF][1]
    assert np.array_equal(dwi.brain_mask, dwi.labels > 0)
