"""Training on real data layouts, determinism, SIGKILL-and-resume, multi-process, bad input."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ssam.config.train import load_train_config
from ssam.errors import CheckpointError, ConfigError, DataError
from ssam.factory import create_model
from ssam.inference.loading import load_adapted_model
from ssam.train import train
from ssam.train.data import build_training_data
from ssam.train.log import read_log
from ssam.train.validate import validate

TINY = [
    "model.variant=tiny",
    "model.image_size=64",
    "model.text_encoder=tiny",
    "model.allow_download=false",
    "progress=false",
    "tensorboard=false",
    "threads=1",  # auto could pick another count per process, and float sums would differ
]


def link_subset(src: Path, dst: Path, n: int) -> Path:
    """A folder-layout dataset of the first ``n`` real pairs, as symlinks (nothing copied)."""
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True)
    for image in sorted((src / "images").iterdir())[:n]:
        mask = src / "masks" / f"{image.stem}.png"
        (dst / "images" / image.name).symlink_to(image)
        (dst / "masks" / mask.name).symlink_to(mask)
    return dst


def link_nnunet_subset(src: Path, dst: Path, cases: list[str], channels: int = 1) -> Path:
    (dst / "imagesTr").mkdir(parents=True)
    (dst / "labelsTr").mkdir()
    shutil.copy(src / "dataset.json", dst / "dataset.json")
    ending = json.loads((src / "dataset.json").read_text())["file_ending"]
    for case in cases:
        for c in range(channels):
            name = f"{case}_{c:04d}{ending}"
            (dst / "imagesTr" / name).symlink_to(src / "imagesTr" / name)
        (dst / "labelsTr" / f"{case}{ending}").symlink_to(src / "labelsTr" / f"{case}{ending}")
    return dst


def _config(tmp_path, checkpoint, datasets, *extra):
    overrides = [*TINY, f"model.sam_checkpoint={checkpoint}", *extra]
    return load_train_config(
        None, overrides, datasets=datasets, output_dir=str(tmp_path / "run"), batch_size=4
    )


@pytest.fixture(scope="module")
def kvasir_small(shared_data, tmp_path_factory):
    return link_subset(shared_data / "kvasir-seg", tmp_path_factory.mktemp("kv") / "kvasir", 12)


def test_train_folder_layout_writes_run_folder(tmp_path, tiny_checkpoint, kvasir_small, capfd):
    config = _config(
        tmp_path,
        tiny_checkpoint,
        [{"path": str(kvasir_small), "layout": "folder", "label": "polyp"}],
        "epochs=2",
        "tensorboard=true",
    )
    result = train(config)
    run = result.run_dir
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "last.safetensors",
        "best.safetensors",
        "state.pt",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").iterdir())
    records = read_log(run / "metrics.jsonl")
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [-1, 0, 1]  # -1: the untrained model, at step 0
    with Image.open(run / "learning_curve.png") as curve:
        assert curve.size[0] >= 1000 and len(np.unique(np.asarray(curve.convert("L")))) > 10
    assert epochs[0]["step"] == 0 and epochs[0]["train_loss"] is None
    assert all(0.0 <= r["val_dice"] <= 1.0 for r in epochs)
    steps = [r for r in records if r["kind"] == "train"]
    assert steps[-1]["step"] == result.progress.step == 2 * 3  # 10 train cases / batch 4
    printed = capfd.readouterr().err
    assert "validation before training: Dice" in printed
    assert "epoch 2/2: loss " in printed and ", val Dice " in printed and "(best " in printed
    assert result.labels == ["polyp"]
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(config)


def test_train_nnunet_2d_curvas(tmp_path, tiny_checkpoint, shared_data):
    src = shared_data / "curvas-ct"
    cases = sorted({p.name.rsplit("_", 1)[0] for p in (src / "imagesTr").iterdir()})[:6]
    root = link_nnunet_subset(src, tmp_path / "curvas", cases)
    config = _config(
        tmp_path,
        tiny_checkpoint,
        [{"path": str(root), "layout": "nnunet", "split": {"val_fraction": 0.34, "seed": 1}}],
        "max_steps=3",
    )
    data = build_training_data(config)
    train_ids = {c.case_id for d in data.train for c in d.cases}
    val_ids = {c.case_id for d in data.val for c in d.cases}
    assert train_ids and val_ids and not train_ids & val_ids
    assert data.vocabulary == ["kidney", "liver", "pancreas"]
    result = train(config)
    assert result.progress.step == 3


def test_train_nifti_3d_slices(tmp_path, tiny_checkpoint, shared_data):
    root = link_nnunet_subset(
        shared_data / "ms-lesions-mri", tmp_path / "ms", ["patient07", "patient19"], channels=2
    )
    config = _config(
        tmp_path,
        tiny_checkpoint,
        [
            {
                "path": str(root),
                "layout": "nnunet",
                "channels": ["FLAIR"],
                "intensity": {"preset": "mri"},
                "split": {"val_fraction": 0.5},
                "neg_ratio": 0.1,
            }
        ],
        "max_steps=2",
        "batch_size=2",
    )
    result = train(config)
    assert result.progress.step == 2
    assert result.labels == ["lesion"]
    assert set(load_file(result.last_adapter)) >= {"text_affine.linear.weight"}


def _cli_train(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ssam", "train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_and_resume_is_bit_exact(tmp_path, tiny_checkpoint, kvasir_small):
    env = {**os.environ, "SSAM_CACHE": str(tmp_path / "cache")}
    common = [
        "--data", str(kvasir_small), "--label", "polyp", "--epochs", "3", "--batch-size", "2",
        "--sam-checkpoint", str(tiny_checkpoint), "--set", "checkpoint_every=1",
        "--set", "optim.lr=0.01", *[a for o in TINY for a in ("--set", o)],
    ]  # fmt: skip
    straight = _cli_train([*common, "--output-dir", str(tmp_path / "a")], env)
    assert straight.wait(timeout=300) == 0, straight.stderr.read()

    killed_dir = tmp_path / "b"
    victim = _cli_train([*common, "--output-dir", str(killed_dir)], env)
    log = killed_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill in the middle of the second epoch (5 steps/epoch)
        if log.exists() and sum('"kind": "train"' in x for x in log.read_text().splitlines()) >= 7:
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    state = torch.load(killed_dir / "state.pt", weights_only=True)
    assert 0 < state["progress"]["steps_in_epoch"] < 5, "the kill should land mid-epoch"

    resumed = _cli_train([*common, "--output-dir", str(killed_dir), "--resume"], env)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = load_file(tmp_path / "a" / "last.safetensors")
    b = load_file(killed_dir / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the resumed run's log equals the uninterrupted one's: no replayed step twice, and the
    # interrupted epoch's mean loss counts the steps before the kill
    untimed = [
        [{k: v for k, v in r.items() if k != "time"} for r in read_log(folder / "metrics.jsonl")]
        for folder in (tmp_path / "a", killed_dir)
    ]
    assert untimed[0] == untimed[1]


def test_resume_refuses_changed_settings(tmp_path, tiny_checkpoint, kvasir_small):
    dataset = [{"path": str(kvasir_small), "layout": "folder", "label": "polyp"}]
    train(_config(tmp_path, tiny_checkpoint, dataset, "max_steps=1"))
    changed = _config(tmp_path, tiny_checkpoint, dataset, "max_steps=2", "optim.lr=0.5")
    with pytest.raises(ConfigError, match=r"settings differ.*optim"):
        train(changed, resume=True)
    more = train(_config(tmp_path, tiny_checkpoint, dataset, "max_steps=2"), resume=True)
    assert more.progress.step == 2


def test_bad_input_fails_before_training(tmp_path, tiny_checkpoint, kvasir_small):
    broken = tmp_path / "broken"
    shutil.copytree(kvasir_small, broken, symlinks=True)
    orphan = sorted((broken / "masks").iterdir())[0]
    (broken / "images" / f"{orphan.stem}.jpg").unlink()
    config = _config(
        tmp_path, tiny_checkpoint, [{"path": str(broken), "layout": "folder", "label": "polyp"}]
    )
    with pytest.raises(DataError, match=orphan.stem):
        train(config)
    assert not (tmp_path / "run").exists()  # no empty run folder left behind


def test_resume_before_the_first_save_starts_from_scratch(
    tmp_path, tiny_checkpoint, kvasir_small, capsys
):
    dataset = [{"path": str(kvasir_small), "layout": "folder", "label": "polyp"}]
    config = _config(tmp_path, tiny_checkpoint, dataset, "max_steps=2")
    run = tmp_path / "run"
    run.mkdir()  # what a run killed before its first save leaves: a log, a half-written state
    (run / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 9.0}\n')
    (run / ".state.pt.k2j4.tmp").write_bytes(b"half")
    result = train(config, resume=True)
    assert "nothing saved yet" in capsys.readouterr().err
    assert result.progress.step == 2
    assert not list(run.glob(".*.tmp"))
    steps = [r["step"] for r in read_log(run / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2]  # the stale record is gone
    (run / ".last.safetensors.x1.tmp").write_bytes(b"half")
    train(_config(tmp_path, tiny_checkpoint, dataset, "max_steps=3"), resume=True)
    assert not list(run.glob(".*.tmp"))


def test_an_unsafe_state_is_refused_plainly(tmp_path, tiny_checkpoint, kvasir_small):
    dataset = [{"path": str(kvasir_small), "layout": "folder", "label": "polyp"}]
    config = _config(tmp_path, tiny_checkpoint, dataset, "max_steps=1")
    train(config)
    torch.save({"progress": _Unsafe()}, tmp_path / "run" / "state.pt")
    with pytest.raises(CheckpointError) as err:
        train(_config(tmp_path, tiny_checkpoint, dataset, "max_steps=2"), resume=True)
    message = str(err.value)
    assert "refused as unsafe" in message and "state.pt" in message
    assert "weights_only" not in message and "\n" not in message


class _Unsafe:
    def __reduce__(self):
        return (os.getcwd, ())


def test_two_processes_on_cpu(tmp_path, tiny_checkpoint, kvasir_small):
    """DDP through accelerate with the gloo backend: the multi-GPU path, run on CPU."""
    env = {**os.environ, "SSAM_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", "-m", "ssam", "train", "--data", str(kvasir_small),
        "--label", "polyp", "--epochs", "1", "--batch-size", "2", "--output-dir",
        str(tmp_path / "ddp"), "--sam-checkpoint", str(tiny_checkpoint), "--set", "device=cpu",
        *[a for o in TINY for a in ("--set", o)],
    ]  # fmt: skip
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_log(tmp_path / "ddp" / "metrics.jsonl")
    steps = [r for r in records if r["kind"] == "train"]
    assert len(steps) == 10 // (2 * 2)  # global batch of 4, last partial one dropped
    assert (tmp_path / "ddp" / "last.safetensors").is_file()
    # The processes split validation between them and gather: every sample scored once, and
    # the gathered score is that of the saved adapter on the whole validation set.
    (epoch,) = [r for r in records if r["kind"] == "epoch" and r["epoch"] == 0]
    val_set = build_training_data(load_train_config(tmp_path / "ddp" / "config.yaml", [])).val_set
    assert epoch["val_n"] == len(val_set) == 2
    model, _ = load_adapted_model(tmp_path / "ddp" / "best.safetensors", tiny_checkpoint)
    single = validate(model, val_set, 2, torch.device("cpu"), contextlib.nullcontext)
    assert single["dice"] == pytest.approx(epoch["val_dice"], abs=1e-4)


def test_a_run_starts_with_the_untrained_model_and_records_its_split(
    tmp_path, tiny_checkpoint, shared_data
):
    src = shared_data / "curvas-ct"
    cases = sorted({p.name.rsplit("_", 1)[0] for p in (src / "imagesTr").iterdir()})[:8]
    root = link_nnunet_subset(src, tmp_path / "curvas", cases)
    datasets = [{"path": str(root), "layout": "nnunet", "split": {"val_fraction": 0.3}}]
    config = _config(tmp_path, tiny_checkpoint, datasets, "max_steps=1", "seed=3")
    result = train(config)
    records = read_log(result.run_dir / "metrics.jsonl")
    (split,) = [r for r in records if r["kind"] == "split"]
    saved = json.loads((result.run_dir / "split.json").read_text())["curvas"]
    # curvas_PATIENT_SLICE names: slices of one patient stay on one side
    patients = [{c.rsplit("_", 1)[0] for c in saved[side]} for side in ("train", "val")]
    assert patients[0] and patients[1] and not patients[0] & patients[1]
    assert split["val"] == {"cases": len(saved["val"]), "groups": len(patients[1])}
    assert split["source"] == "seeded fraction 0.3 (seed 0)"
    assert (result.run_dir / "config.yaml").read_text().startswith("# split of curvas: seeded")
    # the step-0 record is the untrained model's validation (same seed, same build)
    baseline = next(r for r in records if r["kind"] == "epoch")
    assert baseline["epoch"] == -1 and baseline["step"] == 0
    torch.manual_seed(config.seed)
    untrained = create_model(config.model)
    data = build_training_data(config)
    expected = validate(untrained, data.val_set, 4, torch.device("cpu"), contextlib.nullcontext)
    assert baseline["val_dice"] == pytest.approx(expected["dice"], abs=1e-6)


def test_passes_of_fewer_images_give_the_gradients_of_one(tmp_path, tiny_checkpoint, shared_data):
    """A batch of 4 run in passes of 1, 2 or 3 images ends two steps with the same trainable
    tensors (the text-affine BatchNorm's running statistics included) as one pass of 4: the
    chunk losses are weighted by their share, the label tokens and their batch statistics
    come from the whole batch (three CT labels: the statistics are the batch's, not the
    running ones)."""
    src = shared_data / "curvas-ct"
    cases = sorted({p.name.rsplit("_", 1)[0] for p in (src / "imagesTr").iterdir()})[:4]
    dataset = [{"path": str(link_nnunet_subset(src, tmp_path / "ct", cases)), "layout": "nnunet"}]
    steps = {}
    for micro in (4, 3, 2, 1):
        config = _config(
            tmp_path / f"m{micro}", tiny_checkpoint, dataset, "max_steps=2",
            f"micro_batch_size={micro}", "val_at_start=false",
        )  # fmt: skip
        steps[micro] = load_file(train(config).last_adapter)
    for micro in (3, 2, 1):
        assert steps[micro].keys() == steps[4].keys()
        for key, value in steps[4].items():
            torch.testing.assert_close(steps[micro][key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_auto_passes_fit_the_memory_budget():
    from ssam.train.batches import chunk_rows, plan_micro_batch

    assert [(s.start, s.stop) for s in chunk_rows(7, 3)] == [(0, 3), (3, 6), (6, 7)]
    gib = 2**30
    # LiteMedSAM training at 256 takes ~2.4 GiB an image: 2 fit a 6 GiB budget, and one
    # always runs even when the budget is smaller.
    assert plan_micro_batch(32, 256, 41_000, 6 * gib) == 2
    assert plan_micro_batch(32, 256, 41_000, 1 * gib) == 1
    assert plan_micro_batch(8, 64, 41_000, 6 * gib) == 8


def test_default_training_on_litemedsam_plans_passes(tmp_path, kvasir_small):
    """`ssam train --data ... --label polyp` and nothing else: LiteMedSAM, 256, batch 32, in
    passes that fit the machine and, on a CPU, run fastest (the plan only, no step)."""
    from ssam.train.loop import choose_micro_batch

    config = load_train_config(
        None, [], datasets=[{"path": str(kvasir_small), "layout": "folder", "label": "polyp"}]
    )
    assert (config.model.variant, config.model.image_size, config.batch_size) == (
        "litemedsam",
        256,
        32,
    )
    chosen, line = choose_micro_batch(config, torch.device("cpu"))
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert chosen * 41_000 * 256**2 <= max(memory / 4, 41_000 * 256**2)
    assert chosen == 1  # a CPU: one 256 x 256 image per pass is the fastest
    assert line.startswith("batch 32 in passes of 1 image, gradients") and "auto:" in line


def test_auto_passes_on_a_cpu_stay_at_tinyvits_fastest_size(kvasir_small):
    """TinyViT's full-resolution stage runs slower per image in larger passes on a CPU: auto
    keeps passes to ``cpu_pass_pixels`` (2 images at 128 px, 1 from 160 px up), while
    a set size, and ViT bases, are left as they were."""
    from ssam.sam.families import get_family
    from ssam.train.loop import choose_micro_batch

    entry = {"path": str(kvasir_small), "layout": "folder", "label": "polyp"}
    cpu = torch.device("cpu")

    def passes(variant: str, size: int, micro="auto") -> tuple[int, str]:
        overrides = [f"model.variant={variant}", f"model.image_size={size}", "batch_size=8",
                     f"micro_batch_size={micro}"]  # fmt: skip
        return choose_micro_batch(load_train_config(None, overrides, datasets=[entry]), cpu)

    assert get_family("litemedsam").cpu_pass_pixels == 32_768
    assert [passes("litemedsam", s)[0] for s in (64, 128, 160, 192, 256)] == [8, 2, 1, 1, 1]
    chosen, line = passes("litemedsam", 128)
    assert line.startswith("batch 8 in passes of 2 images") and "on a CPU at most 32768" in line
    assert passes("litemedsam", 128, 4) == (4, "batch 8 in passes of 4 images, gradients as "
                                                "one batch (as set)")  # fmt: skip
    assert passes("tiny", 256) == (8, "")


def test_training_above_the_cpu_size_on_a_cpu_says_which_size_to_use(kvasir_small):
    from ssam.train.loop import cpu_size_advice

    entry = {"path": str(kvasir_small), "layout": "folder", "label": "polyp"}

    def advice(*overrides: str, device: str = "cpu") -> str:
        config = load_train_config(None, list(overrides), datasets=[entry])
        return cpu_size_advice(config, torch.device(device))

    line = advice()  # the default: LiteMedSAM at 256
    assert line.startswith("training at 256 px on a CPU: 160 px is this base's CPU size")
    assert line.endswith("--set model.image_size=160 to use it")
    assert advice("model.image_size=160") == advice("model.image_size=128") == ""
    assert advice("model.method=decoder") == ""  # the encoder runs once per image
    assert advice("model.variant=tiny") == ""
    assert advice(device="meta") == ""  # not a CPU
