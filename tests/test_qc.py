"""QC pictures (`upscale --qc`) and the batch page, looked at in a real browser when one is
installed (Chromium, headless)."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from mrisr.cli.main import main
from mrisr.data.phantom import make_brain_phantom
from mrisr.degradation import degrade_volume, interpolate
from mrisr.io import load_nifti, save_nifti
from mrisr.inference.qc import capture_planes, qc_path, write_qc_png

CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser",
                                                  "google-chrome") if shutil.which(name)), None)


def _phantom_pair(folder, name="t2", seed=0, factor=2):
    """A small thick-slice T2 (32 x 32 x 24 voxels of 2 mm, slices ``factor`` x thicker) and
    the full-resolution T1."""
    ph = make_brain_phantom(shape=(32, 32, 24), voxel_size=(2.0, 2.0, 2.0), seed=seed)
    lr, lr_affine = degrade_volume(ph.t2w, ph.affine, (1, 1, factor), kind="thick_slice")
    folder.mkdir(parents=True, exist_ok=True)
    save_nifti(lr, lr_affine, folder / f"{name}.nii.gz")
    save_nifti(ph.t1w, ph.affine, folder / f"{name}_t1.nii.gz")
    return folder / f"{name}.nii.gz", folder / f"{name}_t1.nii.gz"


def test_qc_planes_show_input_at_its_resolution_cubic_and_output(tmp_path):
    lr_path, t1_path = _phantom_pair(tmp_path)
    lr, t1 = load_nifti(lr_path), load_nifti(t1_path)
    out = np.random.default_rng(0).random((32, 32, 24)).astype(np.float32)
    out_affine = t1.affine
    planes = capture_planes(lr, out, out_affine, t1)
    assert list(planes.panels) == ["input (nearest)", "cubic", "mrisr", "reference"]
    cx, cy, cz = planes.centre
    # nearest: output slice z shows input slice z // 2 (slices 2x thicker), unchanged in-plane
    assert np.array_equal(planes.panels["input (nearest)"][2], lr.data[:, :, cz // 2])
    assert np.array_equal(planes.panels["input (nearest)"][0][:, 1::2],
                          lr.data[cx, :, :])
    # cubic: the cubic baseline's plane, away from the volume's ends
    cubic = interpolate(lr.data, (32, 32, 24), "cubic")
    assert np.allclose(planes.panels["cubic"][2], cubic[:, :, cz],
                       atol=2e-3 * float(cubic.max()))
    assert np.array_equal(planes.panels["mrisr"][1], out[:, cy, :])
    assert np.allclose(planes.panels["reference"][2], t1.data[:, :, cz], atol=1e-4)
    assert planes.plane_names == ("sagittal", "coronal", "axial")
    # the planes pass through the brain
    assert 8 <= cz <= 16 and planes.panels["input (nearest)"][2].max() > 0
    png = write_qc_png(tmp_path / "x_qc.png", planes, "title")
    import matplotlib.image
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 300 and image.shape[1] > 600
    assert image[..., :3].std() > 0.1  # pictures, not a blank page


def test_upscale_qc_writes_a_picture_beside_the_output(tmp_path):
    lr_path, t1_path = _phantom_pair(tmp_path / "in")
    out = tmp_path / "out" / "t2_sr.nii.gz"
    out.parent.mkdir()
    rc = main(["upscale", str(lr_path), "--ref", str(t1_path), "--scale", "1,1,2",
               "--no-register", "--adapt", "0", "-o", str(out), "--qc", "-q"])
    assert rc == 0
    picture = qc_path(out)
    assert picture == tmp_path / "out" / "t2_sr_qc.png" and picture.is_file()
    import matplotlib.image
    image = matplotlib.image.imread(picture)
    assert image[..., :3].std() > 0.1
    info = json.loads(out.with_name("t2_sr.json").read_text())
    assert info["model"] == "dualarbnet_robust"
    # without --qc: no picture
    rc = main(["upscale", str(lr_path), "--scale", "1,1,2", "--model", "cubic",
               "-o", str(tmp_path / "out" / "plain.nii.gz"), "-q"])
    assert rc == 0 and not (tmp_path / "out" / "plain_qc.png").exists()


@pytest.fixture
def qc_batch(tmp_path):
    """A folder of three phantom scans upscaled with --qc: (output folder, output names)."""
    folder = tmp_path / "scans"
    for seed in range(3):
        _phantom_pair(folder, name=f"scan{seed}", seed=seed)
        (folder / f"scan{seed}_t1.nii.gz").unlink()
    out = tmp_path / "upscaled"
    rc = main(["upscale", str(folder), "--scale", "1,1,2", "--model", "cubic", "-o", str(out),
               "--qc", "-q"])
    assert rc == 0
    return out, [f"scan{seed}.nii.gz" for seed in range(3)]


def test_batch_qc_page_lists_every_output_with_its_picture(qc_batch):
    out, names = qc_batch
    page = (out / "qc.html").read_text()
    for name in names:
        stem = name[:-len(".nii.gz")]
        assert f"<h2>{name}</h2>" in page
        assert f'src="{stem}_qc.png"' in page and (out / f"{stem}_qc.png").is_file()
    assert "model</td><td>cubic" in page and "3 output(s), 0 failed" in page


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium)")
def test_batch_qc_page_renders_in_chromium(qc_batch, tmp_path):
    out, names = qc_batch
    url = (out / "qc.html").resolve().as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars"]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run(flags + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=120, env=env).stdout
    for name in names:
        assert name in dom
    assert dom.count("<img ") == len(names)
    shot = tmp_path / "shot.png"
    subprocess.run(flags + ["--window-size=1000,2600", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, env=env, check=True)
    import matplotlib.image
    pixels = matplotlib.image.imread(shot)[..., :3].mean(axis=-1)
    # The pictures' black backgrounds: a page whose images did not load is white with text
    # (a few % dark pixels at most).
    dark = float((pixels < 0.1).mean())
    assert dark > 0.05, f"only {dark:.1%} dark pixels: the QC pictures did not render"
