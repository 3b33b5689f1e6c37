"""Pictures of training and evaluation: learning_curve.png, dice_per_case.png, worst_cases.png,
the per-epoch line and the validation bar."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image
from tests.test_evaluate import _ssam, _train_and_evaluate, small_ms_lesion_datasets
from tests.test_train import TINY, link_nnunet_subset, link_subset

from ssam.config.train import load_train_config
from ssam.evaluation.evaluate import evaluate
from ssam.evaluation.plots import PANEL, WORST_ROWS

KEEP = os.environ.get("SSAM_KEEP_PICTURES")  # a folder: copy the pictures there to look at


def _keep(*paths) -> None:
    if KEEP:
        os.makedirs(KEEP, exist_ok=True)
        for path in paths:
            shutil.copy(path, os.path.join(KEEP, f"{path.parent.parent.name}-{path.name}"))


def _check_png(path, min_width: int) -> tuple[int, int]:
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        grey = np.asarray(picture.convert("L"))
    assert grey.shape[1] >= min_width
    assert len(np.unique(grey)) > 10 and grey.std() > 10  # drawn, not blank
    return grey.shape


def _check_worst_sheet(path, rows: int) -> None:
    height, width = _check_png(path, 3 * PANEL)
    assert rows * PANEL <= height <= rows * (PANEL + 60) + 120


def test_evaluate_writes_pictures(tmp_path, tiny_checkpoint, shared_data):
    root = link_subset(shared_data / "glas", tmp_path / "glas", 8)
    datasets = [
        {"path": str(root), "layout": "folder", "label": "gland", "split": {"val_fraction": 0.25}}
    ]
    _, result = _train_and_evaluate(tmp_path, tiny_checkpoint, datasets)
    out = result.output_dir
    assert result.pictures == [out / "dice_per_case.png", out / "worst_cases.png"]
    _check_png(out / "dice_per_case.png", 900)
    rows = min(WORST_ROWS, result.n_cases)
    assert len(result.worst_cases) == rows == 2
    _check_worst_sheet(out / "worst_cases.png", rows)
    dice = {r.case_id: r.dice for r in result.table.rows}
    assert [dice[c] for c in result.worst_cases] == sorted(dice.values())
    _keep(*result.pictures)


def test_worst_sheet_of_many_cases_and_labels_keeps_six(
    tmp_path, tiny_checkpoint, shared_data, capfd
):
    """More cases than rows: the six lowest; 2D nnU-Net images with three labels."""
    src = shared_data / "curvas-ct"
    cases = sorted({p.name.rsplit("_", 1)[0] for p in (src / "imagesTr").iterdir()})[:8]
    root = link_nnunet_subset(src, tmp_path / "curvas", cases)
    config = load_train_config(
        None,
        [*TINY, f"model.sam_checkpoint={tiny_checkpoint}"],
        datasets=[{"path": str(root), "layout": "nnunet"}],
        output_dir=str(tmp_path / "run"),
    )
    result = evaluate(config, None, "all", tmp_path / "eval", progress=True)  # untrained
    err = capfd.readouterr().err
    assert "evaluating: " not in err  # progress=True, but bars go to terminals only
    assert result.n_cases > WORST_ROWS and len(result.worst_cases) == WORST_ROWS
    _check_worst_sheet(result.output_dir / "worst_cases.png", WORST_ROWS)
    _check_png(result.output_dir / "dice_per_case.png", 900)
    _keep(*result.pictures)


def test_volume_sheet_shows_a_slice(tmp_path, tiny_checkpoint, shared_data):
    datasets = small_ms_lesion_datasets(shared_data, tmp_path / "ms")
    _, result = _train_and_evaluate(tmp_path, tiny_checkpoint, datasets, "batch_size=2")
    _check_worst_sheet(result.output_dir / "worst_cases.png", 1)
    _keep(*result.pictures)


def test_training_prints_epochs_and_draws_the_curve(tmp_path, tiny_checkpoint, kvasir_small, capfd):
    from ssam.train import train

    config = load_train_config(
        None,
        [*TINY, f"model.sam_checkpoint={tiny_checkpoint}", "epochs=3", "progress=true"],
        datasets=[{"path": str(kvasir_small), "layout": "folder", "label": "polyp"}],
        output_dir=str(tmp_path / "run"),
        batch_size=4,
    )
    result = train(config)
    err = capfd.readouterr().err
    assert "validation before training: Dice " in err
    for epoch in (1, 2, 3):
        assert f"epoch {epoch}/3: loss " in err
    assert "validation: " not in err and "%|" not in err  # bars on a terminal only
    _check_png(result.run_dir / "learning_curve.png", 1000)
    _keep(result.run_dir / "learning_curve.png")


@pytest.fixture(scope="module")
def kvasir_small(shared_data, tmp_path_factory):
    return link_subset(shared_data / "kvasir-seg", tmp_path_factory.mktemp("kv") / "kvasir", 12)


def test_cli_prints_the_picture_paths(tmp_path, tiny_checkpoint, shared_data):
    root = link_subset(shared_data / "glas", tmp_path / "glas", 3)
    tiny = [a for o in TINY for a in ("--set", o)]
    out = tmp_path / "out"
    done = _ssam(
        "evaluate",
        *["--data", str(root), "--label", "gland", "--sam-checkpoint", str(tiny_checkpoint)],
        *tiny,
        *["--split", "all", "--output-dir", str(out)],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("dice_per_case.png", "worst_cases.png"):
        assert str(out / name) in done.stdout
    _check_worst_sheet(out / "worst_cases.png", 3)
