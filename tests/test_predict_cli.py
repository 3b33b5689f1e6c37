"""``ssam predict`` on a folder of mixed real inputs, one of them corrupt and one 4D."""

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from predict_helpers import (
    LABELS,
    crop_mri,
    kvasir_image,
    write_dicom,
    write_png,
)
from ssam.cli.main import app, main
from ssam.data.io import read_image
from ssam.inference.label_maps import compute_label_map
from ssam.inference.merge import merge_adapter
from ssam.inference.predictor import SSAMPredictor
from ssam.sam.build import build_random_sam
from ssam.sam.checkpoint import save_state_dict
from ssam.sam.variants import get_sam_spec

runner = CliRunner()
SPACING = (0.8, 0.9, 2.5)


pytestmark = pytest.mark.usefixtures("single_thread")


def make_inputs(folder, shared_data):
    """One case of each kind, plus a corrupt PNG and a 4D NIfTI."""
    folder.mkdir()
    (folder / "kvasir.jpg").write_bytes(kvasir_image(shared_data).read_bytes())
    grey = np.asarray(Image.open(kvasir_image(shared_data)).convert("L"))
    write_png(folder / "grey.png", grey)
    write_dicom(folder / "ct.dcm", (np.arange(40 * 30).reshape(40, 30) * 3).astype(np.uint16))
    crop_mri(shared_data, folder / "mri.nii.gz", count=2)
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = (-20.0, 10.0, 5.0)
    volume = np.random.default_rng(0).normal(100, 20, (24, 20, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, affine), folder / "spaced.nii.gz")
    series = folder / "series"
    series.mkdir()
    for k in range(3):
        pixels = (np.arange(32 * 28).reshape(32, 28) + 50 * k).astype(np.uint16)
        write_dicom(series / f"{k}.dcm", pixels, position=(-50.0, -60.0, 10.0 + 2.0 * k))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 2, 2), np.float32), np.eye(4)), folder / "4d.nii.gz")
    (folder / "notes.txt").write_text("not an image: ignored")
    return folder


def predict(*args):
    return runner.invoke(app, ["predict", *map(str, args), "--no-progress"])


@pytest.fixture(scope="module")
def run(adapter, tiny_checkpoint, shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    inputs = make_inputs(root / "in", shared_data)
    out = root / "out"
    base = ["--adapter", adapter, "--sam-checkpoint", tiny_checkpoint]
    result = predict(
        inputs, "-o", out, *base, "--save-probabilities", "--save-masks", "--batch-size", "2"
    )
    return inputs, out, result, base


def read_masks(out, case: str, suffix: str) -> np.ndarray:
    """The per-label mask files of a case, (L, *spatial) bool."""
    if suffix == ".png":
        files = [np.asarray(Image.open(out / f"{case}_mask_{n}.png")) for n in LABELS]
    else:
        files = [np.asarray(nib.load(out / f"{case}_mask_{n}.nii.gz").dataobj) for n in LABELS]
    assert all(set(np.unique(f)) <= {0, 1} for f in files)
    return np.stack(files).astype(bool)


def test_every_good_case_has_its_outputs(run):
    inputs, out, result, _ = run
    assert result.exit_code == 1, result.output  # two cases failed
    for case in ("kvasir", "grey"):
        assert (out / f"{case}.png").is_file() and (out / f"{case}_overlay.png").is_file()
        for label in LABELS:
            assert (out / f"{case}_prob_{label}.png").is_file()
            assert (out / f"{case}_mask_{label}.png").is_file()
    for case in ("mri", "spaced", "series", "ct"):  # a single DICOM keeps its geometry too
        assert (out / f"{case}.nii.gz").is_file() and (out / f"{case}.json").is_file()
        assert all((out / f"{case}_mask_{label}.nii.gz").is_file() for label in LABELS)
    label_map = np.asarray(Image.open(out / "kvasir.png"))
    assert label_map.shape == Image.open(inputs / "kvasir.jpg").size[::-1]
    assert set(np.unique(label_map)) <= {0, 1, 2}


def test_failures_are_named_with_their_reason(run):
    _, out, result, _ = run
    text = " ".join(result.output.split())
    assert "6 done, 0 skipped, 2 failed" in text
    assert "broken" in text and "cannot read image" in text
    assert "4d" in text and "4D volume" in text
    assert not (out / "broken.json").exists() and not (out / "notes.json").exists()


def test_volume_outputs_keep_geometry_and_agree(run):
    inputs, out, _, _ = run
    for case in ("mri", "spaced"):
        source, written = nib.load(inputs / f"{case}.nii.gz"), nib.load(out / f"{case}.nii.gz")
        np.testing.assert_array_equal(written.affine, source.affine)
        assert written.shape == source.shape
        assert written.header.get_zooms() == source.header.get_zooms()
        label_map = np.asarray(written.dataobj)
        probs = np.stack(
            [np.asarray(nib.load(out / f"{case}_prob_{n}.nii.gz").dataobj) for n in LABELS]
        )
        np.testing.assert_array_equal(label_map, compute_label_map(probs))


def test_sizes_in_ml_and_mm2(run):
    _, out, _, _ = run
    report = json.loads((out / "spaced.json").read_text())
    masks = read_masks(out, "spaced", ".nii.gz")  # each label's own mask, overlaps kept
    assert report["unit"] == "mL" and report["spacing_mm"] == pytest.approx(SPACING)
    for k, name in enumerate(LABELS):
        voxels = int(masks[k].sum())
        assert report["labels"][name]["voxels"] == voxels
        assert report["labels"][name]["volume_ml"] == pytest.approx(voxels * 0.8 * 0.9 * 2.5 / 1e3)
    grey = json.loads((out / "grey.json").read_text())
    assert grey["unit"] == "pixels" and grey["labels"]["liver"]["area_mm2"] is None
    ct = json.loads((out / "ct.json").read_text())
    pixels = int(read_masks(out, "ct", ".nii.gz")[0].sum())
    assert ct["unit"] == "mm2" and ct["labels"]["liver"]["area_mm2"] == pytest.approx(
        pixels * 0.7 * 0.8
    )


def test_saved_masks_equal_the_predictors_and_keep_overlaps(run, adapter, tiny_checkpoint):
    inputs, out, _, _ = run
    predictor = SSAMPredictor.from_adapter(adapter, tiny_checkpoint)
    cases = {
        "kvasir.jpg": ".png",
        "ct.dcm": ".nii.gz",
        "mri.nii.gz": ".nii.gz",
        "series": ".nii.gz",
    }
    for name, suffix in cases.items():
        case = name.split(".")[0]
        masks = read_masks(out, case, suffix)
        expected = predictor.segment(inputs / name).masks  # 2D: (L, H, W); NIfTI (L, H, W, 1)
        np.testing.assert_array_equal(masks, expected.reshape(masks.shape))
        report = json.loads((out / f"{case}.json").read_text())
        assert report["mask_files"] == {n: f"{case}_mask_{n}{suffix}" for n in LABELS}
        assert "most probable" in report["label_map_rule"]
        count_key = "voxels" if report["kind"] == "3d" else "pixels"
        assert [report["labels"][n][count_key] for n in LABELS] == masks.sum(
            axis=tuple(range(1, masks.ndim))
        ).tolist()
    source, written = nib.load(inputs / "mri.nii.gz"), nib.load(out / "mri_mask_liver.nii.gz")
    np.testing.assert_array_equal(written.affine, source.affine)
    assert written.shape == source.shape
    masks = read_masks(out, "mri", ".nii.gz")
    overlap = masks[0] & masks[1]  # both labels hold these voxels; the label map shows one
    label_map = np.asarray(nib.load(out / "mri.nii.gz").dataobj)
    assert overlap.any() and set(np.unique(label_map[overlap])) <= {1, 2}


def test_save_masks_counts_in_the_planned_outputs(run, tmp_path):
    inputs, _, _, base = run
    first = predict(inputs / "grey.png", "-o", tmp_path, *base, "--no-overlay")
    assert "1 done" in first.output and not list(tmp_path.glob("*_mask_*"))
    assert "mask_files" not in json.loads((tmp_path / "grey.json").read_text())
    with_masks = predict(inputs / "grey.png", "-o", tmp_path, *base, "--no-overlay", "--save-masks")
    assert "1 done, 0 skipped" in " ".join(with_masks.output.split())  # masks were missing
    assert sorted(p.name for p in tmp_path.glob("*_mask_*")) == [
        f"grey_mask_{n}.png" for n in sorted(LABELS)
    ]
    again = predict(inputs / "grey.png", "-o", tmp_path, *base, "--no-overlay", "--save-masks")
    assert "0 done, 1 skipped" in " ".join(again.output.split())


def test_dicom_series_becomes_nifti_with_its_affine(run):
    inputs, out, _, _ = run
    _, properties = read_image(inputs / "series")
    written = nib.load(out / "series.nii.gz")
    np.testing.assert_allclose(written.affine, properties.affine, atol=1e-5)
    assert written.shape == (32, 28, 3)


def test_existing_outputs_are_skipped_unless_overwrite(run):
    inputs, out, _, base = run
    stamp = (out / "grey.json").stat().st_mtime_ns
    again = predict(
        inputs / "grey.png", inputs / "ct.dcm", "-o", out, *base, "--save-probabilities"
    )
    assert again.exit_code == 0, again.output
    assert "0 done, 2 skipped, 0 failed" in " ".join(again.output.split())
    assert (out / "grey.json").stat().st_mtime_ns == stamp
    redo = predict(inputs / "grey.png", "-o", out, *base, "--save-probabilities", "--overwrite")
    assert "1 done" in redo.output and (out / "grey.json").stat().st_mtime_ns != stamp


def test_labels_globs_and_merged_model(run, adapter, tiny_checkpoint, tmp_path):
    inputs, out, _, base = run
    pattern = str(inputs / "*.png")  # grey.png and broken.png
    result = predict(pattern, "-o", tmp_path, *base, "-l", "kidney", "--no-overlay")
    assert result.exit_code == 1 and "1 done, 0 skipped, 1 failed" in " ".join(
        result.output.split()
    )
    report = json.loads((tmp_path / "grey.json").read_text())
    assert list(report["labels"]) == ["kidney"]
    merged = merge_adapter(adapter, tmp_path / "m" / "merged.pth", tiny_checkpoint).checkpoint
    result = predict(inputs / "grey.png", "-o", tmp_path / "m", "--merged", merged)
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(
        np.asarray(Image.open(tmp_path / "m" / "grey.png")),
        np.asarray(Image.open(out / "grey.png")),
    )


def test_bad_settings_fail_with_one_line(run, tmp_path, capsys):
    inputs, _, _, base = run
    other = save_state_dict(
        build_random_sam(get_sam_spec("tiny"), seed=9).state_dict(), tmp_path / "other.pth"
    )
    cases = [
        (["-l", " , "], "label list is empty"),
        (["--adapter", base[1], "--sam-checkpoint", other], "another base model"),
        (["--intensity", "ct"], "preset 'ct' needs"),
        (["-l", "left kidney,Left_Kidney", "--save-masks"], "would write the same file"),
    ]
    for extra, message in cases:
        args = ["predict", str(inputs / "grey.png"), "-o", str(tmp_path), "--no-progress"]
        with pytest.raises(SystemExit) as exit_info:
            main([*args, *(base if extra[0] != "--adapter" else []), *map(str, extra)])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    assert predict(tmp_path / "missing.png", "-o", tmp_path, *base).exit_code == 1
