"""``--backend torch-compile``: the adapter merged and the image encoder compiled by TorchInductor
give the plain model's masks, on LiteMedSAM's TinyViT (its one-image pass compiled) and on a
ViT (its forward), through the library and the loader of ``ssam predict``/``serve``; a compiler
that cannot run is a clear error and leaves the eager model working."""

import numpy as np
import pytest

from predict_helpers import LABELS, crop_mri, kvasir_image, train_adapter
from ssam.cli.common import load_option_predictor
from ssam.errors import ConfigError
from ssam.inference import backends
from ssam.inference.backends import use_backend
from ssam.inference.predictor import SSAMPredictor
from ssam.tuning.svd import iter_svd_layers

# A test-time compile takes tens of seconds on two cores.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]


def test_compiled_tiny_vit_predicts_as_the_plain_model(lite_adapter, shared_data, tmp_path):
    plain = SSAMPredictor.from_adapter(lite_adapter, prepare_encoder=False)
    compiled = SSAMPredictor.from_adapter(lite_adapter, batch_size=2)
    assert list(iter_svd_layers(compiled.model))
    line = use_backend(compiled, "torch-compile", None)
    assert line.startswith("backend: torch-compile (adapter merged, image encoder compiled")
    encoder = compiled.model.image_encoder
    assert "encode" in vars(encoder) and not list(iter_svd_layers(compiled.model))
    assert "compiled by TorchInductor in 0 s" in use_backend(compiled, "torch-compile", None)
    volume = crop_mri(shared_data, tmp_path / "flair.nii.gz")  # 3 slices, passes of 2
    for path in (kvasir_image(shared_data), volume):
        a = plain.segment_file(path, list(LABELS))
        b = compiled.segment_file(path, list(LABELS))
        assert np.abs(a.probabilities - b.probabilities).max() < 1e-4, path
        assert (a.label_map != b.label_map).mean() < 1e-4, path  # only ties between labels


def test_each_compiled_model_keeps_its_weights_and_takes_any_batch(
    adapter, tiny_checkpoint, shared_data, tmp_path, capsys
):
    """Two adapters on one base compiled in one process (frozen weights must not be shared
    between their graphs), a ViT fed batches of 2 and 1 slices: each as its own eager model.
    Loaded as ``ssam predict --backend torch-compile`` loads its model."""
    other = train_adapter(tiny_checkpoint, tmp_path / "other", steps=6)
    volume = crop_mri(shared_data, tmp_path / "flair.nii.gz")  # 3 slices: batches of 2 and 1
    compiled = [
        load_option_predictor(
            source, None, tiny_checkpoint, None, "cpu", True, "trained", 2, backend="torch-compile"
        )
        for source in (adapter, other)
    ]
    assert capsys.readouterr().err.count("compiled by TorchInductor in") == 2
    results = []
    for source, predictor in zip((adapter, other), compiled, strict=True):
        eager = SSAMPredictor.from_adapter(source, tiny_checkpoint, batch_size=2)
        a = eager.segment_file(volume, list(LABELS))
        b = predictor.segment_file(volume, list(LABELS))
        assert np.abs(a.probabilities - b.probabilities).max() < 1e-4, source
        results.append(a.probabilities)
    assert np.abs(results[0] - results[1]).max() > 1e-2  # the two adapters differ


def test_a_compiler_that_cannot_run_is_named(lite_adapter, monkeypatch):
    predictor = SSAMPredictor.from_adapter(lite_adapter)
    missing = {**backends.COMPILE_OPTIONS, "cpp.cxx": (None, "/nonexistent/g++")}
    monkeypatch.setattr(backends, "COMPILE_OPTIONS", missing)
    with pytest.raises(ConfigError, match="could not compile the image encoder") as raised:
        use_backend(predictor, "torch-compile", None)
    assert "/nonexistent/g++" in str(raised.value) and "--backend torch" in str(raised.value)
    assert "encode" not in vars(predictor.model.image_encoder)  # eager again, and it runs
    assert predictor.segment(
        np.arange(1024, dtype=np.uint8).reshape(32, 32), "liver"
    ).masks.shape == (1, 32, 32)
