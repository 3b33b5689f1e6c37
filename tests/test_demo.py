"""A shortened demo (tiny sizes) runs end to end offline and writes its run folder."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from ssam.cli.main import app
from ssam.demo import DemoOptions, run_demo


def test_quick_demo_writes_everything_and_learns(tmp_path):
    result = run_demo(DemoOptions(output_dir=tmp_path / "demo", quick=True), say=lambda _: None)
    out = result.output_dir
    for name in ("learning_curve.png", "overlays.png", "demo.json"):
        assert (out / name).is_file(), name
    for name in ("metrics.csv", "summary.json"):
        assert (out / "eval" / name).is_file() and (out / "eval-untrained" / name).is_file()
    assert (out / "foundation" / "sam_demo.pth").is_file()
    assert list((out / "predictions").glob("*_overlay.png"))
    assert result.labels == ["liver", "kidney", "spleen", "lesion"]
    before = sum(result.dice_untrained.values()) / len(result.labels)
    after = sum(result.dice_trained.values()) / len(result.labels)
    assert after > before, (result.dice_untrained, result.dice_trained)
    report = json.loads((out / "demo.json").read_text())
    assert report["seconds"]["total"] > 0 and "tiny" not in report["weights"].split()[0]


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    runner = CliRunner()
    outcome = runner.invoke(app, ["demo", "--quick", "--output-dir", str(tmp_path)])
    assert outcome.exit_code != 0
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def _ssam(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "ssam", *map(str, args)],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=600,
    )  # fmt: skip


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    run_demo(DemoOptions(output_dir=out, quick=True), say=lambda _: None)
    return out


def test_train_on_the_demo_base_with_one_flag(quick_demo, tmp_path, shared_data):
    data = tmp_path / "kvasir"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
        for path in sorted((shared_data / "kvasir-seg" / sub).iterdir())[:6]:
            (data / sub / path.name).symlink_to(path)
    run = tmp_path / "run"
    done = _ssam("train", "--base", quick_demo, "--data", data, "--label", "polyp",
                 "--max-steps", "1", "--batch-size", "2", "--output-dir", run,
                 "--set", "progress=false", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    config = yaml.safe_load((run / "config.yaml").read_text())
    demo = yaml.safe_load((quick_demo / "train" / "config.yaml").read_text())["model"]
    assert config["model"]["variant"] == "demo" and config["optim"]["lr"] == 0.01
    assert config["model"]["image_size"] == demo["image_size"]
    assert config["model"]["sam_checkpoint"] == str(quick_demo / "foundation" / "sam_demo.pth")
    evaluated = _ssam("evaluate", "--base", quick_demo, "--data", data, "--label", "polyp",
                      "--adapter", run / "last.safetensors", "--split", "all",
                      "--output-dir", tmp_path / "eval", cwd=tmp_path)  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    own_lr = _ssam("train", "--base", quick_demo, "--data", data, "--label", "polyp",
                   "--max-steps", "1", "--output-dir", tmp_path / "run2",
                   "--set", "optim.lr=0.001", "--set", "progress=false", cwd=tmp_path)  # fmt: skip
    assert own_lr.returncode == 0, own_lr.stderr[-2000:]
    assert yaml.safe_load((tmp_path / "run2" / "config.yaml").read_text())["optim"]["lr"] == 0.001
    wrong = _ssam("train", "--base", tmp_path, "--data", data, "--label", "polyp", cwd=tmp_path)
    assert wrong.returncode == 2 and "not a finished demo run" in wrong.stderr
    assert "Traceback" not in wrong.stderr
