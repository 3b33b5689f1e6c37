"""ONNX Runtime backends: the same label maps as torch on real files, an export cached once per
adapter + base + size + weight type and written atomically, and ``ssam predict --backend``."""

import shutil
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from predict_helpers import LABELS, crop_mri, kvasir_image, predict_on_backend, train_adapter
from ssam.cli import choices
from ssam.errors import ConfigError
from ssam.evaluation.evaluate import build_predictor
from ssam.inference import backends
from ssam.inference.backends import BACKENDS, use_backend
from ssam.inference.merge import merge_adapter
from ssam.inference.predictor import SSAMPredictor

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("single_thread")

# float32 onnxruntime vs torch: the same maths in another order. Every probability agrees to
# PROBABILITY_TOL, so a label-map pixel can differ only where a label sits within PROBABILITY_TOL
# of 0.5 or two labels' probabilities within 2 * PROBABILITY_TOL of each other.
PROBABILITY_TOL = 1e-4


@pytest.fixture(scope="module")
def real_files(shared_data, tmp_path_factory) -> list[Path]:
    """Three Kvasir-SEG photographs and three slices of a real MS-lesion FLAIR volume."""
    folder = tmp_path_factory.mktemp("inputs")
    photos = sorted((shared_data / "kvasir-seg" / "images").glob("*.jpg"))[:3]
    return [*photos, crop_mri(shared_data, folder / "flair.nii.gz")]


def list_differences(torch_seg, onnx_seg, tol: float = PROBABILITY_TOL):
    """Label-map pixels that differ, each with why: a label within ``tol`` of 0.5 or two
    labels' probabilities within ``2 * tol`` of each other (a near tie)."""
    found = []
    for index in zip(*np.nonzero(torch_seg.label_map != onnx_seg.label_map), strict=True):
        probs = torch_seg.probabilities[(slice(None), *index)]
        top = np.sort(probs)[-2:] if len(probs) > 1 else probs
        near_half = bool(np.any(np.abs(probs - 0.5) <= tol))
        near_tie = len(top) == 2 and top[1] - top[0] <= 2 * tol
        found.append((tuple(int(i) for i in index), "explained" if near_half or near_tie else ""))
    return found


def compare(predictor_a, predictor_b, files, tol) -> list:
    """Segment each file with both; probabilities within ``tol``; the differing pixels."""
    differing = []
    for path in files:
        first = predictor_a.segment_file(path, list(LABELS))
        second = predictor_b.segment_file(path, list(LABELS))
        assert np.abs(first.probabilities - second.probabilities).max() <= tol, path
        differing += list_differences(first, second)
    return differing


def test_backend_choices_mirror_the_library():
    assert choices.BACKENDS == BACKENDS == get_args(backends.Backend)


def test_onnx_label_maps_match_torch_on_real_files(adapter, tiny_checkpoint, real_files):
    reference = SSAMPredictor.from_adapter(adapter, tiny_checkpoint, batch_size=2)
    onnx = SSAMPredictor.from_adapter(adapter, tiny_checkpoint, batch_size=2)
    line = use_backend(onnx, "onnx", adapter)
    assert "onnxruntime" in line and onnx.runtime is not None
    differing = compare(reference, onnx, real_files, PROBABILITY_TOL)
    assert all(why == "explained" for _, why in differing), differing  # usually none at all


def test_merged_checkpoint_backend(adapter, tiny_checkpoint, real_files, tmp_path):
    files = merge_adapter(adapter, tmp_path / "merged.pth", tiny_checkpoint)
    reference = SSAMPredictor.from_merged(files.checkpoint)
    onnx = SSAMPredictor.from_merged(files.checkpoint)
    use_backend(onnx, "onnx", files.checkpoint)
    (folder,) = (tmp_path / "onnx-cache").iterdir()
    assert "-merged" in folder.name and "-base" not in folder.name
    differing = compare(reference, onnx, real_files[:1], PROBABILITY_TOL)
    assert all(why == "explained" for _, why in differing), differing


def test_int8_stays_close_to_torch(adapter, tiny_checkpoint, real_files):
    """The tiny model's layers (32 wide) are the worst case for per-tensor int8 weights; measured:
    probabilities within 9e-4 on one CPU and 5.1e-3 on an AMD EPYC (onnxruntime's int8 kernels
    differ by CPU). Its labels' probabilities sit near each other (0.52-0.53), so 0.1-1.6 % of
    label-map pixels differ: every one a near tie of two labels within that bound."""
    reference = SSAMPredictor.from_adapter(adapter, tiny_checkpoint)
    int8 = SSAMPredictor.from_adapter(adapter, tiny_checkpoint)
    use_backend(int8, "onnx-int8", adapter)
    assert int8.runtime.record["int8"] is True
    for path in real_files:
        first = reference.segment_file(path, list(LABELS))
        second = int8.segment_file(path, list(LABELS))
        assert np.abs(first.probabilities - second.probabilities).max() < 1e-2, path
        differing = list_differences(first, second, 1e-2)
        assert all(why == "explained" for _, why in differing), path


def test_export_is_cached_and_keyed(adapter, tiny_checkpoint, tmp_path, monkeypatch):
    first = shutil.copy(adapter, tmp_path / "a.safetensors")
    other = train_adapter(tiny_checkpoint, tmp_path / "other", steps=3)
    second = shutil.copy(other, tmp_path / "b.safetensors")
    predictor = SSAMPredictor.from_adapter(first, tiny_checkpoint)
    use_backend(predictor, "onnx", first)
    folder = predictor.runtime.folder
    assert folder.parent == tmp_path / "onnx-cache"
    stamp = (folder / "image_encoder.onnx").stat().st_mtime_ns

    def no_export(*args):
        raise AssertionError("exported again")

    with monkeypatch.context() as patch:
        patch.setattr(backends, "_write_export", no_export)
        again = SSAMPredictor.from_adapter(first, tiny_checkpoint)
        use_backend(again, "onnx", first)
    assert again.runtime.folder == folder
    assert (folder / "image_encoder.onnx").stat().st_mtime_ns == stamp
    changed = SSAMPredictor.from_adapter(second, tiny_checkpoint)
    use_backend(changed, "onnx", second)
    assert changed.runtime.folder.parent == folder.parent
    assert changed.runtime.folder != folder
    names = sorted(p.name for p in folder.parent.iterdir())
    assert len(names) == 2 and all(n.startswith("v1-adapter") and "-s64" in n for n in names)


def test_half_written_export_is_never_used(adapter, tiny_checkpoint, tmp_path, monkeypatch):
    source = shutil.copy(adapter, tmp_path / "a.safetensors")
    predictor = SSAMPredictor.from_adapter(source, tiny_checkpoint)

    def crash(src, dst):
        raise RuntimeError("killed while quantising")

    monkeypatch.setattr(backends, "quantize_encoder", crash)
    with pytest.raises(RuntimeError, match="killed"):
        use_backend(predictor, "onnx-int8", source)
    assert list((tmp_path / "onnx-cache").iterdir()) == []  # no folder, no leftovers
    monkeypatch.undo()
    use_backend(predictor, "onnx", source)  # a folder under the right name but no record:
    folder = predictor.runtime.folder
    (folder / backends.RECORD).unlink()
    (folder / "mask_decoder.onnx").write_bytes(b"half")
    use_backend(predictor, "onnx", source)  # ... is replaced, not used
    assert (folder / backends.RECORD).is_file()
    assert (folder / "mask_decoder.onnx").stat().st_size > 4
    assert oct(folder.stat().st_mode & 0o777) != oct(0o700)


def test_onnx_needs_a_model_file_and_the_cpu(adapter, tiny_checkpoint):
    predictor = SSAMPredictor.from_adapter(adapter, tiny_checkpoint)
    with pytest.raises(ConfigError, match="needs --adapter or --merged"):
        use_backend(predictor, "onnx", None)
    with pytest.raises(ConfigError, match="one of torch, torch-compile, onnx, onnx-int8"):
        use_backend(predictor, "tensorrt", adapter)
    assert use_backend(predictor, "torch", None) == "backend: torch"
    with pytest.raises(ConfigError, match="needs --adapter"):  # the untrained baseline
        build_predictor(None, None, 1, backend="onnx")


def test_predict_command_runs_on_onnx(adapter, tiny_checkpoint, shared_data, tmp_path):
    """``ssam predict --backend onnx`` in a real process: label map as torch's."""
    image = kvasir_image(shared_data)
    source = shutil.copy(adapter, tmp_path / "a.safetensors")
    reference, _ = predict_on_backend(image, source, tiny_checkpoint, tmp_path / "torch", "torch")
    onnx, stderr = predict_on_backend(image, source, tiny_checkpoint, tmp_path / "onnx", "onnx")
    assert "backend: onnx (onnxruntime on 1 thread(s)" in stderr
    assert list((tmp_path / "onnx-cache").iterdir())
    differing = int((reference != onnx).sum())
    assert differing <= 0.001 * reference.size, differing


@pytest.mark.parametrize("command", ["predict", "evaluate", "serve"])
def test_commands_offer_the_backends(command):
    from typer.testing import CliRunner

    from ssam.cli.main import app

    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--backend" in result.output
    assert "onnx-int8" in result.output and "torch-compile" in result.output
