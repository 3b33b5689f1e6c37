"""One consistent command line: the same flags everywhere, choices in help and errors, and
mistakes caught (one line, status 2) before anything heavy runs. Every test runs ``ssam`` in
a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

COMMANDS = ("train", "evaluate", "predict", "serve", "export", "merge", "info", "demo", "params")
WRITE_FOLDERS = ("train", "evaluate", "predict", "export", "demo")


def _ssam(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ssam", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def _one_error_line(done: subprocess.CompletedProcess) -> str:
    """The single ``ssam: error:`` line of a refused run (status 2, no traceback)."""
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("ssam: error:")]
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_help_of_every_command_is_clean():
    root = _ssam("--help")
    assert root.returncode == 0 and "<bool>" not in root.stdout
    for command in COMMANDS:
        shown = _ssam(command, "--help")
        assert shown.returncode == 0, shown.stderr
        assert "<bool>" not in shown.stdout, command
        if command in WRITE_FOLDERS:
            assert "--output-dir" in shown.stdout, command
    assert "<trained|auto|rgb|minmax|ct|mri>" in _ssam("predict", "--help").stdout
    assert "<train|val|test|all>" in _ssam("evaluate", "--help").stdout


def test_a_bad_choice_names_the_allowed_values(tmp_path):
    done = _ssam("predict", tmp_path / "x.png", "-o", tmp_path, "--intensity", "hu")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    for value in ("auto", "rgb", "minmax", "ct", "mri"):
        assert f"'{value}'" in done.stderr
    bad_model = _ssam("params", "--model", "vit_x")
    assert bad_model.returncode == 2 and "'vit_b'" in bad_model.stderr


def test_choice_lists_match_the_library():
    from typing import get_args

    from ssam.cli import choices
    from ssam.config.data import IntensityPreset
    from ssam.evaluation.evaluate import SPLITS
    from ssam.sam.variants import SAM_VARIANTS
    from ssam.tuning.methods import METHODS

    assert tuple(SAM_VARIANTS) == choices.SAM_VARIANTS
    assert tuple(METHODS) == choices.METHODS
    assert get_args(IntensityPreset) == choices.INTENSITY_PRESETS
    assert tuple(SPLITS) == choices.SPLITS


def test_predict_on_a_missing_input_fails_at_once_naming_it(tmp_path):
    cache = tmp_path / "cache"
    done = _ssam(
        "predict", tmp_path / "scan.nii.gz", tmp_path / "other.png", "-o", tmp_path / "out",
        "--adapter", tmp_path / "never-read.safetensors",
        env={"SSAM_CACHE": str(cache)},
    )  # fmt: skip
    line = _one_error_line(done)
    assert "no input to predict" in line and "scan.nii.gz" in line and "other.png" in line
    assert "never-read" not in done.stderr and "torch threads" not in done.stderr
    assert not cache.exists()  # the model (and its SVD cache) was never touched


def test_a_missing_adapter_names_the_flag_and_the_fix(tmp_path):
    image = tmp_path / "scan.png"
    image.write_bytes(b"")  # never read: the adapter is checked first
    done = _ssam("predict", image, "-o", tmp_path / "out", "--adapter", tmp_path / "a.safetensors")
    line = _one_error_line(done)
    assert "--adapter" in line and "a.safetensors" in line and "ssam train" in line
    assert "torch threads" not in done.stderr


@pytest.mark.parametrize("flag", ["--sam-checkpoint", "--clip-checkpoint"])
def test_a_missing_checkpoint_names_the_flag(tmp_path, flag):
    done = _ssam("train", "--data", tmp_path, "--label", "x", flag, tmp_path / "gone.pth")
    line = _one_error_line(done)
    assert flag in line and "gone.pth" in line
    if flag == "--clip-checkpoint":
        assert "--set model.text_encoder=tiny" in line and "tests and demos only" in line
    merged = _ssam("merge", "--adapter", tmp_path / "a.safetensors", "-o", tmp_path / "m.pth")
    assert "--adapter" in _one_error_line(merged)


def test_a_folder_dataset_takes_exactly_one_label(tmp_path):
    done = _ssam("evaluate", "--data", tmp_path, "--label", "polyp,lumen")
    line = _one_error_line(done)
    assert "exactly one --label" in line and "polyp, lumen" in line


def test_bad_threads_is_one_line(tmp_path):
    for command in ("evaluate", "train"):
        done = _ssam(command, "--data", tmp_path, "--label", "x", "--threads", "x")
        assert "--threads" in _one_error_line(done)


def test_old_output_spelling_still_works(adapter, tiny_checkpoint, tmp_path, kvasir_pair):
    from PIL import Image

    image = tmp_path / "polyp.png"
    Image.fromarray(kvasir_pair[0]).save(image)
    done = _ssam(
        "predict", image, "--output", tmp_path / "out", "--adapter", adapter,
        "--sam-checkpoint", tiny_checkpoint, "--offline", "--threads", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--output is deprecated" in done.stderr and "--output-dir" in done.stderr
    assert "torch threads: 1 (as asked)" in done.stderr
    assert any((tmp_path / "out").iterdir())


def test_old_output_spelling_works_where_the_folder_has_a_default(tmp_path):
    """``ssam demo`` has a default folder: the deprecated ``--output`` still chooses it."""
    done = _ssam("demo", "--quick", "--output", tmp_path / "old")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--output is deprecated" in done.stderr
    assert (tmp_path / "old").is_dir() and any((tmp_path / "old").iterdir())
