"""Readers and writers on real files: PNG, JPEG, TIFF, BMP, DICOM, NIfTI and the shared data."""

from __future__ import annotations

import gzip
import random

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image

from ssam.config.data import IntensityConfig
from ssam.data.io import (
    binarize_mask,
    read_header,
    read_image,
    read_mask,
    take_slice,
    write_label_map,
)
from ssam.data.transforms import scale_intensity
from ssam.errors import DataError


def _grey(shape=(20, 30), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_png_grey_and_rgb_are_channels_first_depth_one(tmp_path):
    grey, rgb = _grey(), np.stack([_grey(seed=s) for s in range(3)], -1)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    image, props = read_image(tmp_path / "g.png")
    assert image.shape == (1, 20, 30, 1) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, :, :, 0], grey)
    assert props.shape == (20, 30, 1) and props.kind == "2d" and props.is_2d
    np.testing.assert_array_equal(props.affine, np.eye(4))
    image, props = read_image(tmp_path / "c.png")
    assert image.shape == (3, 20, 30, 1) and props.n_channels == 3
    np.testing.assert_array_equal(np.moveaxis(image[..., 0], 0, -1), rgb)


def test_jpeg_and_bmp(tmp_path):
    rgb = np.stack([np.full((16, 24), v, np.uint8) for v in (200, 100, 50)], -1)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(rgb).save(tmp_path / "a.bmp")
    jpeg, _ = read_image(tmp_path / "a.jpg")
    assert jpeg.shape == (3, 16, 24, 1)
    assert np.abs(jpeg[:, 8, 12, 0].astype(int) - [200, 100, 50]).max() <= 3
    bmp, _ = read_image(tmp_path / "a.bmp")
    np.testing.assert_array_equal(np.moveaxis(bmp[..., 0], 0, -1), rgb)


def test_constant_alpha_is_dropped_varying_alpha_is_an_error(tmp_path):
    rgba = np.dstack(
        [np.stack([_grey(seed=s) for s in range(3)], -1), np.full((20, 30), 255, np.uint8)]
    )
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    image, _ = read_image(tmp_path / "opaque.png")
    assert image.shape == (3, 20, 30, 1)
    rgba[0, 0, 3] = 10
    Image.fromarray(rgba).save(tmp_path / "transparent.png")
    with pytest.raises(DataError, match=r"transparent\.png.*alpha"):
        read_image(tmp_path / "transparent.png")


def test_16bit_png_and_tiff_keep_their_values_and_scale_in_the_intensity_step(tmp_path):
    values = np.array([[0, 255, 256, 1000], [30000, 40000, 65535, 7]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "sixteen.png")
    tifffile.imwrite(tmp_path / "sixteen.tif", values)
    for name in ("sixteen.png", "sixteen.tif"):
        image, props = read_image(tmp_path / name)
        assert image.dtype == np.uint16 and props.dtype == "uint16"
        np.testing.assert_array_equal(image[0, :, :, 0], values)
        scaled = scale_intensity(image, IntensityConfig(preset="rgb"))
        assert scaled.max() == pytest.approx(255.0) and scaled.min() == 0.0
        minmax = scale_intensity(image, IntensityConfig(preset="minmax"))
        assert minmax.max() == pytest.approx(255.0)


def test_tiff_rgb_and_multipage_stack(tmp_path):
    rgb = np.stack([_grey(seed=s) for s in range(3)], -1)
    tifffile.imwrite(tmp_path / "rgb.tiff", rgb, photometric="rgb")
    image, props = read_image(tmp_path / "rgb.tiff")
    assert image.shape == (3, 20, 30, 1)
    np.testing.assert_array_equal(np.moveaxis(image[..., 0], 0, -1), rgb)
    assert read_header(tmp_path / "rgb.tiff").n_channels == 3
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([_grey()] * 5))
    with pytest.raises(DataError, match=r"stack\.tif.*multi-page"):
        read_image(tmp_path / "stack.tif")


def test_dicom_file_applies_rescale_and_pixel_spacing(tmp_path, write_dicom):
    stored = np.arange(12 * 10, dtype=np.int16).reshape(12, 10)
    path = write_dicom(
        tmp_path / "ct.dcm", stored, slope=2.0, intercept=-1024.0, spacing=(0.7, 0.8)
    )
    image, props = read_image(path)
    assert image.shape == (1, 12, 10, 1) and image.dtype == np.float32
    np.testing.assert_allclose(image[0, :, :, 0], stored * 2.0 - 1024.0)
    assert props.spacing == pytest.approx((0.7, 0.8, 2.5))
    # Rows step along +y (LPS) by 0.7 mm, columns along +x by 0.8 mm; RAS flips x and y.
    np.testing.assert_allclose(props.affine[:3, 0], [0.0, -0.7, 0.0])
    np.testing.assert_allclose(props.affine[:3, 1], [-0.8, 0.0, 0.0])
    np.testing.assert_allclose(props.affine[:3, 3], [100.0, 120.0, 10.0])
    assert read_header(path).shape == (12, 10, 1)


def test_dicom_monochrome1_is_inverted(tmp_path, write_dicom):
    stored = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    image, _ = read_image(write_dicom(tmp_path / "x.dcm", stored, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(image[0, :, :, 0], [[300, 200], [100, 0]])


def _write_series(folder, write_dicom, steps, shuffle=True):
    names = [f"slice{i:02d}.dcm" for i in range(len(steps))]
    order = list(range(len(steps)))
    if shuffle:
        random.Random(1).shuffle(order)
    for name, i in zip(names, order, strict=True):
        pixels = np.full((6, 5), i * 10, dtype=np.uint16)
        write_dicom(folder / name, pixels, position=(-10.0, -20.0, steps[i]), spacing=(0.5, 0.6))


def test_dicom_series_is_sorted_by_position_and_gets_an_affine(tmp_path, write_dicom):
    folder = tmp_path / "series"
    _write_series(folder, write_dicom, [5.0 + 2.5 * k for k in range(4)])
    volume, props = read_image(folder)
    assert volume.shape == (1, 6, 5, 4) and props.kind == "3d"
    np.testing.assert_array_equal(volume[0, 0, 0, :], [0, 10, 20, 30])
    assert props.spacing == pytest.approx((0.5, 0.6, 2.5))
    np.testing.assert_allclose(props.affine[:3, 2], [0.0, 0.0, 2.5])
    np.testing.assert_allclose(props.affine[:3, 3], [10.0, 20.0, 5.0])
    assert read_header(folder).shape == (6, 5, 4)
    # A label map of a DICOM series is written as NIfTI with the series geometry.
    labels = (volume[0] > 15).astype(np.uint8)
    written = write_label_map(labels, props, tmp_path / "seg.nii.gz")
    back, back_props = read_mask(written)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(back_props.affine, props.affine, atol=1e-5)


def test_dicom_series_with_a_missing_slice_is_an_error(tmp_path, write_dicom):
    folder = tmp_path / "gappy"
    _write_series(folder, write_dicom, [0.0, 2.0, 4.0, 8.0], shuffle=False)
    with pytest.raises(DataError, match=r"gappy.*non-uniform slice spacing"):
        read_image(folder)


def test_nifti_volume_keeps_stored_order_and_affine(tmp_path, write_nifti):
    data = np.random.default_rng(0).random((7, 8, 9)).astype(np.float32)
    affine = np.array([[-2.0, 0, 0, 10], [0, 2.0, 0, -5], [0, 0, 3.0, 1], [0, 0, 0, 1]])
    path = write_nifti(tmp_path / "v.nii.gz", data, affine)
    image, props = read_image(path)
    assert image.shape == (1, 7, 8, 9)
    np.testing.assert_array_equal(image[0], data)
    np.testing.assert_allclose(props.affine, affine)
    assert props.spacing == pytest.approx((2.0, 2.0, 3.0)) and props.kind == "3d"


def test_nifti_4d_is_an_error_but_trailing_singletons_are_fine(tmp_path, write_nifti):
    write_nifti(tmp_path / "t.nii.gz", np.zeros((4, 5, 6, 3), np.float32))
    with pytest.raises(DataError, match=r"t\.nii\.gz.*4D volume"):
        read_image(tmp_path / "t.nii.gz")
    write_nifti(tmp_path / "s.nii", np.zeros((4, 5, 6, 1), np.float32))
    assert read_image(tmp_path / "s.nii")[0].shape == (1, 4, 5, 6)


def test_nifti_header_is_read_without_the_data(tmp_path, write_nifti):
    path = write_nifti(tmp_path / "big.nii.gz", np.ones((30, 30, 30), np.float32))
    blob = path.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    assert read_header(tmp_path / "cut.nii.gz").shape == (30, 30, 30)
    with pytest.raises(DataError, match=r"cut\.nii\.gz"):
        read_image(tmp_path / "cut.nii.gz")


def test_unsupported_missing_and_corrupt_files_name_the_file(tmp_path):
    (tmp_path / "scan.mha").write_bytes(b"xx")
    with pytest.raises(DataError, match=r"scan\.mha.*unsupported"):
        read_image(tmp_path / "scan.mha")
    with pytest.raises(DataError, match=r"nothere\.png"):
        read_image(tmp_path / "nothere.png")
    Image.fromarray(_grey((64, 64))).save(tmp_path / "ok.png")
    blob = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "broken.png").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"broken\.png"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "junk.nii.gz").write_bytes(gzip.compress(b"not a nifti file at all" * 10))
    with pytest.raises(DataError, match=r"junk\.nii\.gz"):
        read_mask(tmp_path / "junk.nii.gz")
    (tmp_path / "junk.dcm").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"junk\.dcm"):
        read_image(tmp_path / "junk.dcm")


def test_masks_palette_grey_rgb_and_colour(tmp_path):
    labels = np.array([[0, 1, 2], [3, 0, 1]], dtype=np.uint8)
    palette = Image.fromarray(labels).convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    palette.save(tmp_path / "p.png")
    mask, props = read_mask(tmp_path / "p.png")
    assert mask.shape == (2, 3, 1) and props.n_channels == 1
    np.testing.assert_array_equal(mask[..., 0], labels)
    Image.fromarray(np.dstack([labels] * 3)).save(tmp_path / "grey_rgb.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey_rgb.png")[0][..., 0], labels)
    Image.fromarray(np.dstack([labels, labels * 2, labels])).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour\.png.*colour mask"):
        read_mask(tmp_path / "colour.png")


def test_binarize_mask():
    np.testing.assert_array_equal(binarize_mask(np.array([0, 255, 254, 3], np.uint8)), [0, 1, 1, 0])
    np.testing.assert_array_equal(binarize_mask(np.array([0, 1], np.uint8)), [0, 1])
    assert binarize_mask(np.zeros(3, np.uint8)).sum() == 0


def test_png_label_map_round_trip_and_shape_checks(tmp_path):
    Image.fromarray(_grey((20, 30))).save(tmp_path / "img.png")
    _, props = read_image(tmp_path / "img.png")
    labels = (np.arange(600).reshape(20, 30) % 4).astype(np.uint8)
    write_label_map(labels, props, tmp_path / "out.png")
    back, back_props = read_mask(tmp_path / "out.png")
    np.testing.assert_array_equal(back[..., 0], labels)
    assert back_props.shape == props.shape
    with pytest.raises(DataError, match=r"bad\.png.*shape"):
        write_label_map(labels[:10], props, tmp_path / "bad.png")


def test_real_nifti_label_map_round_trip_keeps_affine_and_header(shared_data_dir, tmp_path):
    source = shared_data_dir / "ms-lesions-mri" / "labelsTr" / "patient07.nii.gz"
    labels, props = read_mask(source)
    assert labels.shape == (182, 218, 182) and set(np.unique(labels)) <= {0, 1}
    out = write_label_map(labels, props, tmp_path / "patient07_pred.nii.gz")
    back, back_props = read_mask(out)
    assert back.shape == labels.shape
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(back_props.affine, props.affine)
    original, written = nib.load(source).header, nib.load(out).header
    assert written["qform_code"] == original["qform_code"]
    assert written.get_zooms() == original.get_zooms()
    with pytest.raises(DataError, match=r"needs \.nii"):
        write_label_map(labels, props, tmp_path / "volume.png")


def test_real_2d_files(shared_data_dir):
    image, props = read_image(shared_data_dir / "glas" / "images" / "testA_25.jpg")
    mask, mask_props = read_mask(shared_data_dir / "glas" / "masks" / "testA_25.png")
    assert image.shape[0] == 3 and image.shape[1:] == mask.shape == props.shape
    assert set(np.unique(mask)) <= {0, 255}
    ct, _ = read_image(shared_data_dir / "curvas-ct" / "imagesTr" / "curvas_10001_458_0000.png")
    assert ct.shape == (1, 512, 512, 1) and ct.dtype == np.uint8


def test_take_slice_uses_spatial_axes():
    volume = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert take_slice(volume, -1, 2).shape == (2, 3, 4)
    assert take_slice(volume, 0, 1).shape == (2, 4, 5)
    np.testing.assert_array_equal(take_slice(volume, 1, 3), volume[:, :, 3, :])
    labels = volume[0]
    np.testing.assert_array_equal(take_slice(labels, -1, 4), labels[:, :, 4])
    assert take_slice(np.zeros((1, 8, 9, 1)), -1, 0).shape == (1, 8, 9)
    with pytest.raises(IndexError):
        take_slice(labels, 2, 5)
    with pytest.raises(ValueError, match="axis"):
        take_slice(labels, 3, 0)
