import gzip

import nibabel as nib
import numpy as np
import pytest
import scipy.io

from mrisr.errors import InputError
from mrisr.io import (brats_manifest, check_output_path, load_fastmri_volume, load_manifest,
                      load_mat_slice, load_nifti, read_bval_bvec, save_mat_slice, save_nifti,
                      write_bvals, write_bvecs)
from mrisr.io.atomic import atomic_path


def oblique_affine():
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.9, 1.1, 4.0])
    affine[:3, 3] = [-90, 20, -30]
    return affine


def write_int16(path, data, affine):
    img = nib.Nifti1Image(data.astype(np.int16), affine)
    img.header.set_xyzt_units("mm", "msec")
    img.set_qform(affine, 1)
    img.set_sform(affine, 2)
    nib.save(img, str(path))
    return path


def test_nifti_round_trip_float32_and_affines(tmp_path):
    affine = oblique_affine()
    src = write_int16(tmp_path / "in.nii.gz", np.arange(6 * 5 * 4).reshape(6, 5, 4) + 1, affine)
    vol = load_nifti(src)
    assert vol.data.dtype == np.float32 and vol.data.shape == (6, 5, 4)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    out = save_nifti(vol.data * 0.37, vol.affine, tmp_path / "out.nii.gz", template=vol.header)
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.float32
    # Fractional values survive: the int16 input header must not quantise the output.
    np.testing.assert_allclose(np.asarray(img.dataobj), vol.data * 0.37, rtol=1e-6)
    np.testing.assert_allclose(img.header.get_qform(), affine, atol=1e-5)
    np.testing.assert_allclose(img.header.get_sform(), affine, atol=1e-5)
    assert img.header.get_xyzt_units() == ("mm", "msec")
    assert int(img.header["sform_code"]) == 2
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(affine)
    assert not list(tmp_path.glob(".*part*"))


def test_nifti_4d_and_singleton_axes(tmp_path):
    data = np.random.default_rng(0).random((4, 5, 6, 3)).astype(np.float32)
    save_nifti(data, np.eye(4), tmp_path / "dwi.nii")
    assert load_nifti(tmp_path / "dwi.nii", ndim=(3, 4)).data.shape == (4, 5, 6, 3)
    with pytest.raises(InputError, match="expected a 3D image"):
        load_nifti(tmp_path / "dwi.nii")
    save_nifti(data[..., :1], np.eye(4), tmp_path / "one.nii")
    assert load_nifti(tmp_path / "one.nii").data.shape == (4, 5, 6)


def test_bad_nifti_inputs_give_one_line_errors(tmp_path):
    good = save_nifti(np.ones((4, 4, 4), np.float32), np.eye(4), tmp_path / "good.nii.gz")
    cases = {}
    cases["missing"] = (tmp_path / "nope.nii.gz", "file not found")
    (tmp_path / "text.txt").write_text("hello")
    cases["not nifti"] = (tmp_path / "text.txt", "not a NIfTI file")
    raw = gzip.decompress(good.read_bytes())
    (tmp_path / "trunc.nii").write_bytes(raw[:400])
    cases["truncated"] = (tmp_path / "trunc.nii", "cannot read")
    (tmp_path / "trunc.nii.gz").write_bytes(good.read_bytes()[:60])
    cases["truncated gz"] = (tmp_path / "trunc.nii.gz", "cannot read")
    (tmp_path / "garbage.nii").write_bytes(b"\x00" * 10)
    cases["garbage"] = (tmp_path / "garbage.nii", "cannot read")
    bad = np.ones((4, 4, 4), np.float32)
    bad[1, 1, 1] = np.nan
    save_nifti(bad, np.eye(4), tmp_path / "nan.nii")
    cases["nan"] = (tmp_path / "nan.nii", "NaN/Inf")
    save_nifti(np.zeros((4, 4, 4)), np.eye(4), tmp_path / "zero.nii")
    cases["zero"] = (tmp_path / "zero.nii", "all zero")
    save_nifti(np.ones((4, 4)), np.eye(4), tmp_path / "flat.nii")
    cases["2d"] = (tmp_path / "flat.nii", "expected a 3D image")
    for name, (path, message) in cases.items():
        with pytest.raises(InputError, match=message) as info:
            load_nifti(path)
        text = str(info.value)
        assert str(path) in text and "\n" not in text, name


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_check_output_path_refuses_inputs_and_existing(tmp_path):
    src = tmp_path / "in.nii.gz"
    src.write_bytes(b"x")
    with pytest.raises(InputError, match="overwrite an input"):
        check_output_path(src, overwrite=True, inputs=(src,))
    with pytest.raises(InputError, match="exists"):
        check_output_path(src)
    with pytest.raises(InputError, match="does not exist"):
        check_output_path(tmp_path / "no" / "x.nii")
    assert check_output_path(src, overwrite=True) == src


def test_bval_bvec_round_trip_and_checks(tmp_path):
    bvals = np.array([0, 1000, 1000, 2000.0])
    bvecs = np.array([[0, 1, 0, 0.6], [0, 0, 1, 0.8], [0, 0, 0, 0.0]])
    write_bvals(tmp_path / "a.bval", bvals)
    write_bvecs(tmp_path / "a.bvec", bvecs)
    b, v = read_bval_bvec(tmp_path / "a.bval", tmp_path / "a.bvec", n_volumes=4)
    np.testing.assert_allclose(b, bvals)
    np.testing.assert_allclose(v, bvecs)
    (tmp_path / "t.bvec").write_text("\n".join(" ".join(map(str, r)) for r in bvecs.T))
    np.testing.assert_allclose(read_bval_bvec(tmp_path / "a.bval", tmp_path / "t.bvec")[1], bvecs)
    with pytest.raises(InputError, match="4 b-values but the series has 5"):
        read_bval_bvec(tmp_path / "a.bval", tmp_path / "a.bvec", n_volumes=5)
    (tmp_path / "bad.bval").write_text("0 x 1000")
    with pytest.raises(InputError, match="bad.bval"):
        read_bval_bvec(tmp_path / "bad.bval", tmp_path / "a.bvec")


def test_mat_slices(tmp_path):
    img = (np.random.default_rng(0).random((24, 24)) + 1j).astype(np.complex64)
    save_mat_slice(tmp_path / "s.mat", img)
    np.testing.assert_allclose(load_mat_slice(tmp_path / "s.mat"), img)
    scipy.io.savemat(str(tmp_path / "other.mat"), {"img": np.ones((4, 4))})
    with pytest.raises(InputError, match="no variable 'dcm'"):
        load_mat_slice(tmp_path / "other.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(InputError, match="junk.mat"):
        load_mat_slice(tmp_path / "junk.mat")


def test_fastmri_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    vol = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["reconstruction_rss"] = vol
        f["kspace"] = np.zeros((1,))
    np.testing.assert_allclose(load_fastmri_volume(tmp_path / "f.h5"), vol)
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f["kspace"] = np.zeros((1,))
    with pytest.raises(InputError, match="no dataset 'reconstruction_rss'"):
        load_fastmri_volume(tmp_path / "g.h5")


def test_manifest_csv_yaml_and_errors(tmp_path):
    (tmp_path / "m.csv").write_text(
        "subject,split,target,reference,mask\n"
        "a,train,a/t2.nii.gz,a/t1.nii.gz;a/pd.nii.gz,\n"
        "b,test,b/t2.nii.gz,b/t1.nii.gz,b/mask.nii.gz\n")
    m = load_manifest(tmp_path / "m.csv")
    assert [s.subject for s in m.split("train")] == ["a"]
    assert m.subjects[0].references[1] == tmp_path / "a/pd.nii.gz"
    assert m.subjects[1].mask == tmp_path / "b/mask.nii.gz"
    (tmp_path / "m.yaml").write_text(
        "subjects:\n- {subject: a, split: train, target: a/t2.nii.gz, reference: [a/t1.nii.gz]}\n")
    assert load_manifest(tmp_path / "m.yaml").subjects[0].reference == tmp_path / "a/t1.nii.gz"
    assert len(m.digest()) == 64 and m.digest() != load_manifest(tmp_path / "m.yaml").digest()
    with pytest.raises(InputError, match="no subject in split 'val'"):
        m.split("val")
    (tmp_path / "bad.csv").write_text("subject,split,target,colour\na,train,x,red\n")
    with pytest.raises(InputError, match="unknown column"):
        load_manifest(tmp_path / "bad.csv")


def test_brats_manifest_splits_by_patient(tmp_path):
    for i in range(5):
        (tmp_path / f"P{i}").mkdir()
    m = brats_manifest(tmp_path, n_test=2)
    assert [s.split for s in m.subjects] == ["train"] * 3 + ["test"] * 2
    assert m.subjects[0].target.name == "P0_t2.nii.gz"
    with pytest.raises(InputError, match="too few"):
        brats_manifest(tmp_path, n_test=5)
