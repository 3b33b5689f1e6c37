"""ONNX export: encoder and label-prompted decoder agree with PyTorch in onnxruntime."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from predict_helpers import LABELS, kvasir_image, train_adapter
from ssam.cli.main import app
from ssam.inference.export import check_onnx, export_onnx, run_onnx
from ssam.inference.loading import load_adapted_model

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def model(tiny_checkpoint, tmp_path_factory):
    adapter = train_adapter(tiny_checkpoint, tmp_path_factory.mktemp("adapter"))
    return load_adapted_model(adapter, tiny_checkpoint)[0], adapter


@pytest.fixture(scope="module")
def real_image(shared_data):
    """A Kvasir-SEG photograph, (3, H, W) float32 in 0-255."""
    rgb = np.asarray(Image.open(kvasir_image(shared_data)).convert("RGB"))
    return np.moveaxis(rgb, -1, 0).astype(np.float32)


def test_baked_labels_match_pytorch_on_a_real_image(model, real_image, tmp_path):
    files = export_onnx(model[0], tmp_path, LABELS)
    diffs = check_onnx(files, model[0], real_image)
    assert diffs["embeddings"] < 1e-3 and diffs["logits"] < 1e-3
    config = json.loads(files.config.read_text())
    assert config["labels"] == list(LABELS) and config["image_size"] == 64
    assert config["mask_decoder"]["inputs"] == ["image_embeddings"]


def test_tokens_as_input_take_any_number_of_labels(model, real_image, tmp_path):
    files = export_onnx(model[0], tmp_path, ["liver", "kidney", "spleen"], tokens_as_input=True)
    assert check_onnx(files, model[0], real_image)["logits"] < 1e-3
    tokens = np.load(tmp_path / "label_tokens.npy")
    np.save(tmp_path / "label_tokens.npy", tokens[:1])  # one label only: L is dynamic
    images = np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32)
    embeddings, logits = run_onnx(files, images)  # two images: B is dynamic
    assert embeddings.shape == (2, 32, 4, 4) and logits.shape == (2, 1, 64, 64)


def test_export_command_checks_on_a_real_image(model, shared_data, tiny_checkpoint, tmp_path):
    _, adapter = model
    args = ["export", "--adapter", str(adapter), "--sam-checkpoint", str(tiny_checkpoint)]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path), "--no-check"])
    assert result.exception is not None and "--onnx" in str(result.exception)
    image = kvasir_image(shared_data)
    result = CliRunner().invoke(
        app, [*args, "-o", str(tmp_path), "--onnx", "--check-image", str(image), "-l", "liver"]
    )
    assert result.exit_code == 0, result.output
    assert "onnxruntime vs PyTorch" in result.output
    assert (tmp_path / "image_encoder.onnx").is_file() and (
        tmp_path / "mask_decoder.onnx"
    ).is_file()
