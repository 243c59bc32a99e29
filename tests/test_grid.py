import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from mrisr.errors import InputError
from mrisr.grid import (as_scales, downscaled_shape, make_coord, normalized_to_voxel,
                        resample_affine, shape_for_voxel_size, to_grid_sample_order,
                        upscaled_shape, voxel_sizes, voxel_to_normalized, voxel_to_world,
                        world_to_voxel)


def random_affine(rng, zooms):
    # A random rotation (oblique) times anisotropic zooms plus a translation.
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag(zooms)
    affine[:3, 3] = rng.normal(scale=50, size=3)
    return affine


sizes = st.integers(min_value=3, max_value=300)
scales = st.floats(min_value=1.0, max_value=8.0, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(shape=st.tuples(sizes, sizes, sizes), scale=st.tuples(scales, scales, scales),
       zooms=st.tuples(*[st.floats(0.3, 6.0)] * 3), seed=st.integers(0, 2**16))
def test_downsample_upsample_round_trip_lands_on_original_grid(shape, scale, zooms, seed):
    affine = random_affine(np.random.default_rng(seed), zooms)
    lr_shape = downscaled_shape(shape, scale)
    lr_affine = resample_affine(affine, shape, lr_shape)
    back = resample_affine(lr_affine, lr_shape, shape)
    np.testing.assert_allclose(back, affine, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(shape=st.tuples(sizes, sizes, sizes), scale=st.tuples(scales, scales, scales),
       seed=st.integers(0, 2**16))
def test_resampling_preserves_field_of_view_corners(shape, scale, seed):
    affine = random_affine(np.random.default_rng(seed), (0.9, 1.2, 3.0))
    new_shape = upscaled_shape(shape, scale)
    new_affine = resample_affine(affine, shape, new_shape)
    # The outer voxel edges (index -0.5 and N - 0.5) are the same world points on both grids.
    for corner in ([-0.5] * 3, [n - 0.5 for n in shape]):
        new_corner = [-0.5] * 3 if corner[0] == -0.5 else [n - 0.5 for n in new_shape]
        np.testing.assert_allclose(voxel_to_world(np.array(corner), affine),
                                   voxel_to_world(np.array(new_corner), new_affine), atol=1e-6)
    np.testing.assert_allclose(voxel_sizes(new_affine),
                               voxel_sizes(affine) * np.array(shape) / np.array(new_shape),
                               rtol=1e-9)


def test_even_and_odd_sizes_centre_is_fixed():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for n in (4, 5, 240, 155):
        new = resample_affine(affine, (n, n, n), (n * 2, n * 2, n * 2))
        centre_old = voxel_to_world(np.full(3, (n - 1) / 2), affine)
        centre_new = voxel_to_world(np.full(3, (2 * n - 1) / 2), new)
        np.testing.assert_allclose(centre_old, centre_new, atol=1e-9)


def test_make_coord_matches_grid_sample_convention():
    # Sampling an image at its own pixel centres with grid_sample(align_corners=False) must
    # return the image exactly: the coordinate convention and axis order agree.
    img = torch.arange(5 * 7, dtype=torch.float32).reshape(1, 1, 5, 7)
    coord = to_grid_sample_order(make_coord((5, 7)))[None]
    out = torch.nn.functional.grid_sample(img, coord, mode="bilinear", align_corners=False)
    torch.testing.assert_close(out, img)
    c = make_coord((4,))[:, 0]
    torch.testing.assert_close(c, torch.tensor([-0.75, -0.25, 0.25, 0.75]))


def test_normalized_voxel_round_trip():
    idx = np.array([[0.0, 3.5, 9.0]])
    shape = (10, 11, 12)
    np.testing.assert_allclose(normalized_to_voxel(voxel_to_normalized(idx, shape), shape), idx,
                               atol=1e-12)
    np.testing.assert_allclose(voxel_to_normalized(np.array([-0.5, 10.5, 11.5]), shape),
                               [-1.0, 1.0, 1.0])


def test_world_voxel_round_trip():
    affine = random_affine(np.random.default_rng(0), (1.0, 2.0, 3.0))
    pts = np.random.default_rng(1).normal(size=(5, 3)) * 10
    np.testing.assert_allclose(voxel_to_world(world_to_voxel(pts, affine), affine), pts,
                               atol=1e-9)


def test_shapes_and_voxel_size_requests():
    assert upscaled_shape((60, 61), 2.5) == (150, 152)
    assert downscaled_shape((240, 240), 1.5) == (160, 160)
    assert downscaled_shape((240, 155), (3, 1)) == (80, 155)
    affine = np.diag([1.0, 1.0, 5.0, 1.0])
    assert shape_for_voxel_size((256, 256, 30), affine, 1.0) == (256, 256, 150)
    assert shape_for_voxel_size((256, 256, 30), affine, [0.5, 0.5, 1.0]) == (512, 512, 150)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), [1, 2]])
def test_bad_scales_raise_clear_errors(bad):
    with pytest.raises(InputError, match="scale"):
        as_scales(bad, 3)
