"""SSAMPredictor: files and arrays in, per-label probabilities, masks and a label map out."""

import runpy
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from predict_helpers import (
    LABELS,
    crop_mri,
    kvasir_image,
    write_dicom,
    write_png,
)
from ssam.config.data import IntensityConfig
from ssam.errors import AdapterError, ConfigError, DataError
from ssam.inference.inputs import array_properties
from ssam.inference.label_maps import compute_label_map, compute_label_sizes, compute_masks
from ssam.inference.predictor import Segmentation, SSAMPredictor, UnknownLabelWarning
from ssam.sam.build import build_random_sam
from ssam.sam.checkpoint import save_state_dict
from ssam.sam.variants import get_sam_spec
from ssam.tuning.adapter import save_adapter

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture()
def predictor(adapter, tiny_checkpoint):
    return SSAMPredictor.from_adapter(adapter, tiny_checkpoint, batch_size=2)


def check_consistent(result, shape):
    """Shapes at the original size; masks and label map agree with the probabilities."""
    n = len(result.labels)
    assert result.probabilities.shape == (n, *shape) and result.probabilities.dtype == np.float32
    assert result.label_map.shape == shape and result.label_map.dtype == np.uint8
    assert result.probabilities.min() >= 0.0 and result.probabilities.max() <= 1.0
    np.testing.assert_array_equal(result.masks, result.probabilities >= 0.5)
    assert not result.masks.any(axis=0)[result.label_map == 0].any()
    for k in range(1, n + 1):
        assert result.masks[k - 1][result.label_map == k].all()
        best = result.probabilities.argmax(axis=0) + 1
        assert (best[result.label_map == k] == k).all()


def test_png_jpeg_and_dicom_files(predictor, shared_data, tmp_path):
    jpeg = kvasir_image(shared_data)
    rgb = np.asarray(Image.open(jpeg).convert("RGB"))
    png = write_png(tmp_path / "grey.png", rgb[..., 1])
    pixels = (np.arange(48 * 40).reshape(48, 40) % 1500).astype(np.uint16)
    dicom = write_dicom(tmp_path / "ct.dcm", pixels, spacing=(0.5, 0.8))
    for path, shape in ((jpeg, rgb.shape[:2]), (png, rgb.shape[:2]), (dicom, (48, 40))):
        result = predictor.segment(path)
        assert result.labels == LABELS
        check_consistent(result, shape)
    sizes = result.label_sizes()  # the DICOM file states its pixel spacing
    assert result.spacing_known
    for k, name in enumerate(LABELS, start=1):
        count = int(result.masks[k - 1].sum())  # the label's own mask, overlaps included
        assert sizes[name]["pixels"] == count
        assert sizes[name]["area_mm2"] == pytest.approx(count * 0.5 * 0.8)
    assert predictor.segment(png).label_sizes()["liver"]["area_mm2"] is None  # pixels only


def test_nifti_volume_slice_by_slice(predictor, shared_data, tmp_path):
    path = crop_mri(shared_data, tmp_path / "mri.nii.gz", count=3)
    result = predictor.segment(path, ["kidney", "liver"])
    check_consistent(result, (182, 218, 3))
    assert result.labels == ("kidney", "liver") and result.slice_axis == 2
    np.testing.assert_array_equal(result.properties.affine, nib.load(path).affine)
    voxels = int(result.masks[0].sum())
    assert result.label_sizes()["kidney"] == {
        "value": 1,
        "voxels": voxels,
        "volume_ml": voxels / 1e3,
    }


def test_encoder_once_per_slice_decoder_once_per_slice_for_all_labels(predictor):
    encoder_images, decoder_prompts = [], []
    model = predictor.model
    hooks = [
        model.image_encoder.register_forward_hook(
            lambda m, args, out: encoder_images.append(args[0].shape[0])
        ),
        model.mask_decoder.register_forward_pre_hook(
            lambda m, args, kwargs: decoder_prompts.append(
                kwargs["sparse_prompt_embeddings"].shape[0]
            ),
            with_kwargs=True,
        ),
    ]
    volume = np.random.default_rng(0).normal(size=(30, 20, 5)).astype(np.float32)
    predictor.segment_volume(volume, ["liver", "kidney"])
    for hook in hooks:
        hook.remove()
    assert encoder_images == [2, 2, 1]  # batch_size 2, 5 slices: each slice encoded once
    assert decoder_prompts == [2] * 5  # one decoder call per slice, both labels in it


def test_batch_size_and_axis_do_not_change_results(predictor, adapter, tiny_checkpoint):
    volume = np.random.default_rng(1).uniform(0, 900, size=(6, 30, 24)).astype(np.float32)
    by_two = predictor.segment_volume(volume, axis=0)
    single = SSAMPredictor.from_adapter(adapter, tiny_checkpoint, batch_size=1)
    by_one = single.segment_volume(volume, axis=0)
    np.testing.assert_allclose(by_two.probabilities, by_one.probabilities, atol=1e-5)
    moved = predictor.segment_volume(np.moveaxis(volume, 0, -1), axis=-1)
    np.testing.assert_allclose(
        np.moveaxis(moved.probabilities, -1, 1), by_two.probabilities, atol=1e-5
    )


def test_arrays_grey_rgb_and_16_bit(predictor, tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    check_consistent(predictor.segment(rgb), (40, 52))
    check_consistent(predictor.segment(rgb[..., 0], spacing=(0.5, 0.5)), (40, 52))
    deep = (rgb[..., 0].astype(np.uint16) * 200).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)  # 16-bit greyscale PNG
    check_consistent(predictor.segment(path), (40, 52))
    with pytest.raises(DataError, match="expected a 2D image"):
        predictor.segment(np.zeros((2, 3, 4, 5)))


def test_alpha_constant_is_dropped_varying_is_refused(predictor, tmp_path):
    rgba = np.full((20, 24, 4), 255, dtype=np.uint8)
    rgba[..., :3] = np.random.default_rng(3).integers(0, 256, (20, 24, 3))
    write_png(tmp_path / "opaque.png", rgba)
    check_consistent(predictor.segment(tmp_path / "opaque.png"), (20, 24))
    rgba[:5, :5, 3] = 0
    write_png(tmp_path / "transparent.png", rgba)
    with pytest.raises(DataError, match="transparent.png.*alpha"):
        predictor.segment(tmp_path / "transparent.png")


def test_label_lists(predictor):
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)  # not constant: that is refused
    with pytest.raises(ConfigError, match="empty"):
        predictor.segment(image, [])
    with pytest.raises(ConfigError, match="listed twice"):
        predictor.segment(image, ["liver", " liver"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = predictor.segment(image, ["liver", "spleen"])
    assert result.labels == ("liver", "spleen")
    messages = [str(w.message) for w in caught if issubclass(w.category, UnknownLabelWarning)]
    assert len(messages) == 1 and "'spleen'" in messages[0]


def test_adapter_for_another_base_is_refused(adapter, tmp_path):
    other = build_random_sam(get_sam_spec("tiny"), seed=7)
    checkpoint = save_state_dict(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(AdapterError, match="another base model.*base_sha256"):
        SSAMPredictor.from_adapter(adapter, checkpoint)


def test_intensity_preset_recorded_in_adapter_is_used(tiny_model, tiny_checkpoint, tmp_path):
    path = save_adapter(
        tiny_model, tmp_path / "a.safetensors", labels=["x"], intensity={"preset": "minmax"}
    )
    predictor = SSAMPredictor.from_adapter(path, tiny_checkpoint)
    assert predictor.intensity.preset == "minmax"


def test_label_map_rules():
    probs = np.array([[0.2, 0.6, 0.7, 0.5], [0.4, 0.6, 0.9, 0.1]], dtype=np.float32)[..., None]
    np.testing.assert_array_equal(compute_label_map(probs)[:, 0], [0, 1, 2, 1])
    masks = np.array([[[0, 1], [1, 0]], [[0, 0], [1, 1]]], dtype=bool)[..., None]
    sizes = compute_label_sizes(masks, ["a", "b"], (2.0, 0.5, 3.0), is_volume=True)
    assert sizes["b"] == {"value": 2, "voxels": 2, "volume_ml": 2 * 3.0 / 1000}
    with pytest.raises(ValueError, match="L >= 1"):
        compute_label_map(np.zeros((0, 4, 4)))
    with pytest.raises(ValueError, match="L = 3"):
        compute_label_sizes(masks, ["a", "b", "c"], None, is_volume=True)


def segmentation_of(probabilities: np.ndarray, labels: tuple[str, ...]) -> Segmentation:
    """A 2D Segmentation (spacing 0.5 x 2 mm) built from chosen probabilities (L, H, W)."""
    properties = array_properties(np.zeros((1, *probabilities.shape[1:], 1)), (0.5, 2.0), "2d")
    return Segmentation(
        labels=labels,
        probabilities=probabilities,
        masks=compute_masks(probabilities),
        label_map=compute_label_map(probabilities),
        properties=properties,
        slice_axis=2,
        spacing_known=True,
        intensity=IntensityConfig(preset="rgb"),
        value_range=None,
    )


def test_label_sizes_count_each_mask_not_the_label_map():
    organ = np.array([[0.9, 0.8, 0.7], [0.6, 0.2, 0.1]], dtype=np.float32)
    lesion = np.array([[0.95, 0.3, 0.9], [0.1, 0.5, 0.0]], dtype=np.float32)
    alone = segmentation_of(organ[None], ("organ",))
    both = segmentation_of(np.stack([organ, lesion]), ("organ", "lesion"))
    np.testing.assert_array_equal(both.label_map, [[2, 1, 2], [1, 2, 0]])  # one per pixel
    assert alone.label_sizes()["organ"] == both.label_sizes()["organ"]
    assert both.label_sizes() == {
        "organ": {"value": 1, "pixels": 4, "area_mm2": 4.0},
        "lesion": {"value": 2, "pixels": 3, "area_mm2": 3.0},  # 2 of them inside the organ
    }


def test_a_labels_size_and_mask_do_not_depend_on_the_others_asked(predictor, shared_data, tmp_path):
    volume = crop_mri(shared_data, tmp_path / "mri.nii.gz", count=2)
    for path in (volume, kvasir_image(shared_data)):
        alone = predictor.segment(path, ["liver"])
        both = predictor.segment(path, ["kidney", "liver"])
        np.testing.assert_array_equal(alone.masks[0], both.masks[1])
        assert alone.label_sizes()["liver"] == both.label_sizes()["liver"] | {"value": 1}
        overlap = both.masks[0] & both.masks[1]
        assert overlap.any(), "the test needs masks that overlap"
        count_key = "voxels" if both.is_volume else "pixels"
        assert both.label_sizes()["liver"][count_key] > int((both.label_map == 2).sum())


def test_merged_and_adapted_predictors_agree(predictor, adapter, tiny_checkpoint, tmp_path):
    from ssam.inference.merge import merge_adapter

    files = merge_adapter(adapter, tmp_path / "merged.pth", tiny_checkpoint)
    merged = SSAMPredictor.from_merged(files.checkpoint)
    assert merged.trained_labels == LABELS
    image = np.random.default_rng(4).integers(0, 256, (50, 34, 3), dtype=np.uint8)
    a, b = predictor.segment(image), merged.segment(image)
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    torch.testing.assert_close(
        predictor.label_tokens(LABELS), merged.label_tokens(LABELS), atol=1e-6, rtol=0
    )


def test_speed_benchmark_quick_mode_runs(capsys, monkeypatch):
    folder = Path(__file__).parents[1] / "bench"
    monkeypatch.syspath_prepend(str(folder))  # as when run as a script: its helpers beside it
    bench = runpy.run_path(str(folder / "predict_speed.py"))
    assert bench["main"](["--quick", "--rounds", "1", "--labels", "3"]) == 0
    out = capsys.readouterr().out
    assert "encoder 1 call(s) on 1 image(s)" in out and "merged / same layout" in out
    assert "sam_stock" in out and "x stock" in out
