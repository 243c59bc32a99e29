import numpy as np
import pytest
import torch

from mrisr.degradation import (centered_fft, degrade, degrade_volume, kspace_downsample,
                               kspace_lowpass_mask, kspace_resize, spline_resize, thick_slice)
from mrisr.errors import ConfigError, InputError
from mrisr.grid import resample_affine


def smooth_image(shape, seed=0):
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(seed)
    return gaussian_filter(rng.random(shape), 2.0).astype(np.float32) + 1.0


@pytest.mark.parametrize("shape,scale", [((240, 240), 2.0), ((240, 240), 1.5), ((96, 80), 3.7),
                                         ((31, 64), (2.2, 1.0)), ((20, 24, 18), 2.5)])
def test_kspace_crop_keeps_exactly_the_central_samples(shape, scale):
    img = smooth_image(shape)
    lr = kspace_downsample(img, scale, n_spatial=len(shape), align="centre")
    expected_shape = tuple(int(round(n / s)) for n, s in
                           zip(shape, scale if isinstance(scale, tuple) else (scale,) * len(shape)))
    assert lr.shape == expected_shape and np.iscomplexobj(lr)
    k_hr = centered_fft(torch.from_numpy(img).to(torch.complex64), len(shape)).numpy()
    k_lr = centered_fft(torch.from_numpy(lr), len(shape)).numpy()
    mask = kspace_lowpass_mask(shape, lr.shape).numpy()
    # The LR spectrum is the HR spectrum's central block, times the intensity compensation.
    factor = np.sqrt(np.prod(lr.shape) / np.prod(shape))
    np.testing.assert_allclose(k_lr.reshape(-1) / factor, k_hr[mask], rtol=1e-4, atol=1e-4)
    # Grid alignment changes only the phase of the kept samples, never their magnitude.
    aligned = kspace_downsample(img, scale, n_spatial=len(shape), align="grid")
    k_al = centered_fft(torch.from_numpy(aligned), len(shape)).numpy()
    np.testing.assert_allclose(np.abs(k_al), np.abs(k_lr), rtol=1e-4, atol=1e-4)


def test_kspace_intensity_compensation_preserves_mean():
    img = smooth_image((240, 240))
    for s in (1.5, 2, 3, 4, 6, 8):
        lr = degrade(img, s)
        assert abs(lr.real.mean() - img.mean()) < 1e-4 * img.mean()


def test_zero_fill_then_crop_is_identity_and_crop_then_pad_is_lowpass():
    img = smooth_image((64, 50))
    up = kspace_resize(img, (160, 125))
    np.testing.assert_allclose(kspace_resize(up, (64, 50)).real, img, atol=1e-5)
    lr = kspace_resize(img, (32, 25))
    low = kspace_resize(lr, (64, 50))
    k = centered_fft(torch.from_numpy(low), 2).numpy()
    outside = ~kspace_lowpass_mask((64, 50), (32, 25)).numpy()
    assert np.abs(k[outside]).max() < 1e-5


def test_kspace_works_on_complex_and_batched_torch_input():
    img = torch.randn(3, 2, 48, 48, dtype=torch.complex64)
    lr = kspace_downsample(img, 3.0, n_spatial=2)
    assert isinstance(lr, torch.Tensor) and lr.shape == (3, 2, 16, 16)
    torch.testing.assert_close(lr[1, 0], kspace_downsample(img[1, 0], 3.0))


def test_spline_resize_round_trip_and_constant():
    const = np.full((30, 40), 3.0, np.float32)
    assert np.allclose(spline_resize(const, (75, 100)), 3.0, atol=1e-5)
    img = smooth_image((40, 40))
    # A linear ramp is reproduced exactly by linear interpolation away from the borders.
    ramp = np.add.outer(np.arange(40.0), np.zeros(40)).astype(np.float32)
    up = spline_resize(ramp, (80, 80), order=1)
    expected = (np.arange(80) + 0.5) / 2 - 0.5
    np.testing.assert_allclose(up[2:-2, 10], expected[2:-2], atol=1e-5)
    assert spline_resize(img, (17, 17), antialias=True).shape == (17, 17)


def test_thick_slice_box_profile_averages_whole_slabs():
    vol = np.arange(12, dtype=np.float32)[None, None, :].repeat(2, 0).repeat(2, 1)
    lr = thick_slice(vol, 3.0, axis=2)
    assert lr.shape == (2, 2, 4)
    np.testing.assert_allclose(lr[0, 0], [1, 4, 7, 10])
    # Non-integer factor: slices still partition the FOV, mean is preserved.
    lr2 = thick_slice(vol, 2.4, axis=2)
    assert lr2.shape == (2, 2, 5) and abs(lr2.mean() - vol.mean()) < 1e-5
    gauss = thick_slice(vol, 3.0, axis=2, profile="gaussian")
    assert gauss.shape == (2, 2, 4)
    with pytest.raises(InputError):
        thick_slice(vol, 3.0, axis=2, profile="triangle")


def test_reference_degraded_at_its_own_scale():
    target, ref = smooth_image((96, 96), 1), smooth_image((96, 96), 2)
    assert degrade(target, 4.0).shape == (24, 24)
    assert degrade(ref, 1.5).shape == (64, 64)
    assert degrade(ref, 1.0).shape == (96, 96)


def test_degrade_volume_updates_affine_and_handles_4d():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    vol = smooth_image((24, 24, 12))
    lr, lr_aff = degrade_volume(vol, affine, (2, 2, 1))
    assert lr.shape == (12, 12, 12) and lr.dtype == np.float32 and (lr >= 0).all()
    np.testing.assert_allclose(lr_aff, resample_affine(affine, (24, 24, 12), (12, 12, 12)))
    series = np.stack([vol, 2 * vol], -1)
    lr4, _ = degrade_volume(series, affine, 3, kind="bicubic")
    assert lr4.shape == (8, 8, 4, 2)
    np.testing.assert_allclose(lr4[..., 1], 2 * lr4[..., 0], rtol=1e-5)
    thick, thick_aff = degrade_volume(vol, affine, (1, 1, 4), kind="thick_slice")
    assert thick.shape == (24, 24, 3) and np.isclose(thick_aff[2, 2], 4.0)


def test_unknown_degradation_and_bad_thick_slice_scales():
    with pytest.raises(ConfigError, match="unknown degradation"):
        degrade(np.ones((8, 8)), 2, kind="blur")
    with pytest.raises(ConfigError, match="one axis"):
        degrade(np.ones((8, 8)), (2, 2), kind="thick_slice")


@pytest.mark.parametrize("n,m", [(64, 16), (64, 11), (63, 20), (240, 160)])
def test_grid_aligned_kspace_crop_keeps_structures_in_place(n, m):
    # A smooth blob's centroid, mapped from LR pixel centres to HR indices with the grid
    # convention ((j + 0.5) * n / m - 0.5), must not move; the plain centred crop moves it.
    x = np.arange(n)
    blob = np.exp(-((x[:, None] - 27.3) ** 2 + (x[None, :] - 35.8) ** 2) / (2 * 5.0 ** 2))

    def centroid(img, size):
        w = img.real
        j = np.arange(size)
        pos = (j + 0.5) * n / size - 0.5
        return np.array([(w.sum(1) * pos).sum(), (w.sum(0) * pos).sum()]) / w.sum()
    aligned = kspace_resize(blob, (m, m), align="grid")
    np.testing.assert_allclose(centroid(aligned, m), [27.3, 35.8], atol=0.05)
    if m % 2 == 0 and n % 2 == 0:
        shifted = kspace_resize(blob, (m, m), align="centre")
        expected_shift = 0.5 * (n / m - 1)
        np.testing.assert_allclose(centroid(shifted, m) - [27.3, 35.8], expected_shift, atol=0.05)
