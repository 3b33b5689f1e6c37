"""Methods with a frozen image encoder train on embeddings stored once per image: the same
adapter and masks as encoding every step, stored embeddings reused only when they fit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tests.test_train import link_nnunet_subset, link_subset

from ssam.config.train import load_train_config
from ssam.errors import ConfigError, DataError
from ssam.factory import create_model
from ssam.inference.predictor import SSAMPredictor
from ssam.train import train
from ssam.train.data import build_training_data
from ssam.train.embeddings import EmbeddedSamples, image_rows, stored_embeddings
from ssam.train.log import read_log

pytestmark = pytest.mark.usefixtures("single_thread")

NO_AUGMENT = {"rotation_deg": 0, "brightness": 0}


def _config(folder, data, out, *extra, layout="folder", label="polyp", size=64, augment=None):
    entry = {"path": str(data), "layout": layout, **({"label": label} if label else {})}
    entry["split"] = {"group_pattern": None}
    if augment is not None:
        entry["augment"] = augment
    overrides = [
        f"model.image_size={size}", "model.random_text_tower=true", "model.allow_download=false",
        "epochs=2", "batch_size=4", "samples_per_epoch=8", "optim.lr=1e-3", "progress=false",
        "tensorboard=false", "threads=1", *extra,
    ]  # fmt: skip
    return load_train_config(None, overrides, datasets=[entry], output_dir=str(folder / out))


@pytest.fixture(scope="module")
def kvasir8(shared_data, tmp_path_factory):
    return link_subset(shared_data / "kvasir-seg", tmp_path_factory.mktemp("kv") / "kvasir8", 8)


def _masks(adapter, folder) -> np.ndarray:
    predictor = SSAMPredictor.from_adapter(adapter, allow_download=False)
    files = sorted((folder / "images").iterdir())[:3]
    return np.stack([predictor.segment_file(path, ["polyp"]).masks for path in files])


def _val_dice(run_dir) -> list[float]:
    return [r["val_dice"] for r in read_log(run_dir / "metrics.jsonl") if r["kind"] == "epoch"]


def test_decoder_on_stored_embeddings_equals_encoding_every_step(tmp_path, kvasir8, capfd):
    every_step = _config(tmp_path, kvasir8, "plain", "model.method=decoder",
                         "cache_embeddings=false", augment=NO_AUGMENT)  # fmt: skip
    stored = _config(tmp_path, kvasir8, "stored", "model.method=decoder")  # auto: cached
    assert not every_step.embeddings_cached and stored.embeddings_cached
    plain_run, stored_run = train(every_step), train(stored)
    err = capfd.readouterr().err
    assert "training on stored embeddings (8 images encoded now, 0 reused" in err
    assert "training images are not augmented" in err
    a, b = load_file(plain_run.last_adapter), load_file(stored_run.last_adapter)
    assert a.keys() == b.keys()
    changed = [k for k in a if k.startswith("mask_decoder.")]
    assert changed and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    assert np.allclose(_val_dice(plain_run.run_dir), _val_dice(stored_run.run_dir), atol=1e-6)
    assert len(_val_dice(stored_run.run_dir)) == 3  # untrained, then each epoch
    folder = stored_run.run_dir / "embeddings"
    stored_files = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".lock-"))
    assert stored_files == [f"kvasir8-{role}.{ext}" for role in ("train", "val")
                            for ext in ("json", "npy")]  # fmt: skip
    assert np.array_equal(_masks(plain_run.last_adapter, kvasir8),
                          _masks(stored_run.last_adapter, kvasir8))  # fmt: skip


def test_augmented_embeddings_would_differ(tmp_path, kvasir8):
    """The comparison above can fail: with augmentation left on, encoding every step trains
    another adapter than the stored embeddings (of the images as they are) do."""
    augmented = _config(tmp_path, kvasir8, "aug", "model.method=decoder", "cache_embeddings=false")
    stored = _config(tmp_path, kvasir8, "stored", "model.method=decoder")
    a, b = load_file(train(augmented).last_adapter), load_file(train(stored).last_adapter)
    assert not all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_stored_embeddings_are_reused_only_when_they_fit(tmp_path, kvasir8, capfd):
    shared = tmp_path / "embeddings"
    first = _config(tmp_path, kvasir8, "r1", "model.method=token", f"embeddings_dir={shared}")
    train(first)
    capfd.readouterr()
    again = _config(tmp_path, kvasir8, "r2", "model.method=token", f"embeddings_dir={shared}",
                    "optim.lr=3e-3")  # fmt: skip
    train(again)
    assert "(0 images encoded now, 8 reused" in capfd.readouterr().err
    other_size = _config(tmp_path, kvasir8, "r3", "model.method=token",
                         f"embeddings_dir={shared}", size=96)  # fmt: skip
    train(other_size)
    assert "(8 images encoded now, 0 reused" in capfd.readouterr().err
    assert np.load(shared / "kvasir8-train.npy").shape[-1] == 96 // 4  # TinyViT: stride 4
    record = json.loads((shared / "kvasir8-train.json").read_text())
    assert record["input_size"] == 96 and not record["augmented"]
    (shared / "kvasir8-train.npy").write_bytes(b"")  # a damaged file under a fitting record
    train(_config(tmp_path, kvasir8, "r4", "model.method=token", f"embeddings_dir={shared}",
                  size=96))  # fmt: skip
    assert "(6 images encoded now, 2 reused" in capfd.readouterr().err


def _ct_slices(shared_data, tmp_path):
    cases = sorted(p.stem for p in (shared_data / "curvas-ct" / "labelsTr").iterdir())[:4]
    root = link_nnunet_subset(shared_data / "curvas-ct", tmp_path / "ct", cases)
    return {"path": str(root), "layout": "nnunet"}  # three labels on each image


def _mr_volumes(shared_data, tmp_path):
    root = link_nnunet_subset(shared_data / "ms-lesions-mri", tmp_path / "ms",
                              ["patient07", "patient19"], channels=2)  # fmt: skip
    return {"path": str(root), "layout": "nnunet", "channels": ["FLAIR"], "neg_ratio": 0.2,
            "intensity": {"preset": "mri"}, "split": {"val_fraction": 0.5}}  # fmt: skip


@pytest.mark.parametrize("make", [_ct_slices, _mr_volumes], ids=["ct-labels", "mr-slices"])
def test_each_sample_gets_its_own_image_embedding(make, tmp_path, shared_data):
    """Several labels of one image, and many slices of one volume: each sample's row holds
    the embedding of its own image or slice."""
    entry = make(shared_data, tmp_path)
    overrides = ["model.image_size=64", "model.random_text_tower=true", "model.method=token"]
    config = load_train_config(None, overrides, datasets=[entry], output_dir=str(tmp_path / "r"))
    samples = build_training_data(config).train[0]
    firsts, rows = image_rows(samples)
    assert len(set(rows)) == len(firsts) <= len(samples)  # every row used
    labels = {ref.label for ref in samples.refs}
    assert (len(firsts) < len(samples)) == (len(labels) > 1)  # a slice's labels share its row
    torch.manual_seed(0)
    model = create_model(config.model).eval()
    embeddings, rows, fresh = stored_embeddings(
        model, samples, folder=tmp_path / "e", name="x", encoder="e0", batch_size=8, compute=True
    )
    assert fresh and embeddings.shape[0] == len(firsts)
    wrapped = EmbeddedSamples(samples, embeddings, rows)
    assert len({ref.slice_index for ref in samples.refs}) > 1 or len(labels) > 1
    picks = np.random.default_rng(0).choice(len(samples), size=min(6, len(samples)), replace=False)
    with torch.no_grad():
        for i in picks:
            want = model.encode_images(samples[int(i)]["image"][None])[0]
            assert torch.allclose(wrapped[int(i)]["embedding"], want, atol=1e-5), i
    assert "image" not in wrapped[0] and wrapped[0]["label"] == samples[0]["label"]
    with pytest.raises(DataError, match="do not fit this run"):
        stored_embeddings(model, samples, folder=tmp_path / "e", name="x", encoder="e1",
                          batch_size=8, compute=False)  # fmt: skip


def test_cache_refused_for_a_method_training_the_encoder(tmp_path, kvasir8):
    with pytest.raises(ConfigError, match="cache_embeddings needs a method .* ssam trains it"):
        _config(tmp_path, kvasir8, "x", "cache_embeddings=true")
    assert not _config(tmp_path, kvasir8, "y").embeddings_cached  # ssam: encodes every step


def test_cli_train_method_decoder(tmp_path, kvasir8):
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "ssam", "train", "--data", str(kvasir8), "--label", "polyp",
         "--method", "decoder", "--output-dir", str(run), "--max-steps", "1", "--batch-size",
         "2", "--offline", "--set", "model.image_size=64", "--set", "progress=false",
         "--threads", "1"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "method decoder leaves the image encoder frozen: training on stored embeddings" in (
        done.stderr
    )
    assert (run / "embeddings").is_dir()
    from ssam.tuning.adapter import read_adapter

    assert read_adapter(run / "last.safetensors")[1]["method"] == "decoder"
    bad = subprocess.run(
        [sys.executable, "-m", "ssam", "train", "--data", str(kvasir8), "--label", "polyp",
         "--method", "nope"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "nope" in bad.stderr


def test_a_run_saved_before_the_setting_resumes_if_it_still_encodes_every_step(tmp_path, kvasir8):
    from ssam.train.loop import _check_resume_config

    for method in ("ssam", "decoder"):
        config = _config(tmp_path, kvasir8, method, f"model.method={method}")
        current = config.model_dump(mode="json")
        saved = {k: v for k, v in current.items() if k != "cache_embeddings"}  # an older run
        state = tmp_path / "state.pt"
        if config.embeddings_cached:  # it trained on augmented images, encoding every step
            with pytest.raises(ConfigError, match="cache_embeddings"):
                _check_resume_config(saved, current, state, config.embeddings_cached)
        else:
            _check_resume_config(saved, current, state, config.embeddings_cached)
