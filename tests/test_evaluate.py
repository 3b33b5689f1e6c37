"""Evaluation of trained adapters on real layouts, at the original resolution."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from tests.test_train import TINY, link_nnunet_subset, link_subset

from ssam.config.train import load_train_config
from ssam.evaluation.evaluate import evaluate, select_split_cases
from ssam.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _train_and_evaluate(tmp_path, checkpoint, datasets, *extra):
    config = load_train_config(
        None,
        [*TINY, f"model.sam_checkpoint={checkpoint}", "max_steps=2", *extra],
        datasets=datasets,
        output_dir=str(tmp_path / "run"),
        batch_size=4,
    )
    result = train(config)
    return config, evaluate(config, result.last_adapter, "val", tmp_path / "eval")


def _read_rows(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_evaluate_folder_layout(tmp_path, tiny_checkpoint, shared_data):
    root = link_subset(shared_data / "glas", tmp_path / "glas", 8)
    datasets = [
        {"path": str(root), "layout": "folder", "label": "gland", "split": {"val_fraction": 0.25}}
    ]
    config, result = _train_and_evaluate(tmp_path, tiny_checkpoint, datasets)
    rows = _read_rows(result.output_dir)
    val_ids = {c.case_id for c in select_split_cases(config, "val")["glas"]}
    assert {r["case_id"] for r in rows} == val_ids and len(rows) == 2
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert summary["hd95_unit"] == "px"
    assert "both empty" in summary["empty_gt_policy"].lower()
    assert summary["labels"]["gland"]["n_cases"] == 2
    assert "as the run split it (split.json)" in summary["splits"]["glas"]


def test_evaluate_scores_the_runs_own_split(tmp_path, tiny_checkpoint, shared_data):
    """An adapter's run folder records its split: evaluating it with settings that would split
    otherwise (another seed here; a newer version's defaults in practice) still scores the
    run's validation cases, never cases it trained on, and says so."""
    root = link_subset(shared_data / "glas", tmp_path / "glas", 10)
    datasets = [{"path": str(root), "layout": "folder", "label": "gland",
                 "split": {"source": "fraction", "val_fraction": 0.3}}]  # fmt: skip
    config, _ = _train_and_evaluate(tmp_path, tiny_checkpoint, datasets)
    run = Path(config.output_dir)
    trained_val = json.loads((run / "split.json").read_text())["glas"]["val"]
    for seed in range(1, 20):  # a seed whose split differs from the run's
        dataset = config.datasets[0]
        split = dataset.split.model_copy(update={"seed": seed})
        other = config.model_copy(
            update={"datasets": [dataset.model_copy(update={"split": split})]}
        )
        if {c.case_id for c in select_split_cases(other, "val")["glas"]} != set(trained_val):
            break
    result = evaluate(other, run / "last.safetensors", "val", tmp_path / "again")
    assert {r["case_id"] for r in _read_rows(result.output_dir)} == set(trained_val)
    how = result.table.context["splits"]["glas"]
    assert "as the run split it" in how and "would choose other cases" in how


def test_evaluate_nnunet_2d_every_label(tmp_path, tiny_checkpoint, shared_data):
    src = shared_data / "curvas-ct"
    cases = sorted({p.name.rsplit("_", 1)[0] for p in (src / "imagesTr").iterdir()})[:5]
    root = link_nnunet_subset(src, tmp_path / "curvas", cases)
    datasets = [{"path": str(root), "layout": "nnunet", "split": {"val_fraction": 0.4}}]
    _, result = _train_and_evaluate(tmp_path, tiny_checkpoint, datasets)
    rows = _read_rows(result.output_dir)
    assert {r["label"] for r in rows} == {"liver", "kidney", "pancreas"}
    assert len(rows) == 3 * result.n_cases


def small_ms_lesion_datasets(shared_data: Path, root: Path) -> list[dict]:
    """Two MS-lesion MRI volumes, downsampled to (61, 73, 15) voxels of 3x3x4 mm, as an nnU-Net
    dataset in ``root`` split half/half: the datasets list of a config."""
    src = shared_data / "ms-lesions-mri"
    link_nnunet_subset(src, root, [], channels=0)
    for case in ("patient07", "patient19"):
        for sub, name in (("imagesTr", f"{case}_0000"), ("labelsTr", case)):
            image = nib.load(src / sub / f"{name}.nii.gz")
            data = np.asarray(image.dataobj)[::3, ::3, 60:120:4]
            affine = image.affine @ np.diag([3.0, 3.0, 4.0, 1.0])
            nib.save(nib.Nifti1Image(data, affine), root / sub / f"{name}.nii.gz")
    return [
        {
            "path": str(root),
            "layout": "nnunet",
            "channels": [0],
            "intensity": {"preset": "mri"},
            "split": {"val_fraction": 0.5},
        }
    ]


def test_evaluate_nifti_volume_in_mm(tmp_path, tiny_checkpoint, shared_data):
    """Volumes are scored as volumes: a shrunken anisotropic copy keeps HD95 in mm."""
    datasets = small_ms_lesion_datasets(shared_data, tmp_path / "ms")
    _, result = _train_and_evaluate(tmp_path, tiny_checkpoint, datasets, "batch_size=2")
    rows = _read_rows(result.output_dir)
    assert len(rows) == 1 and rows[0]["label"] == "lesion"
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert summary["hd95_unit"] == "mm"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_configs_validate(path, shared_data):
    config = load_train_config(path)
    assert config.model.variant == "vit_b" and config.model.image_size == 256
    assert config.optim.lr == 1e-4 and config.batch_size == 32
    for dataset in config.datasets:
        assert dataset.path.is_dir(), dataset.path


def _ssam(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "ssam", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_cli_scores_the_untrained_model_on_a_whole_dataset(tmp_path, tiny_checkpoint, shared_data):
    root = link_subset(shared_data / "glas", tmp_path / "glas", 5)
    tiny = [a for o in TINY for a in ("--set", o)]
    common = ["--data", str(root), "--label", "gland", "--sam-checkpoint", str(tiny_checkpoint)]
    out = tmp_path / "baseline"
    done = _ssam(
        "evaluate", *common, *tiny, "--split", "all", "--output-dir", str(out), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no --adapter: scoring the untrained base model" in done.stderr
    assert "all split of glas: all 5 labelled cases" in done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"].startswith("untrained") and summary["split"] == "all"
    assert len(_read_rows(out)) == 5
    # a dataset with nothing in 'val' says how to score it whole, in one line
    done = _ssam(
        "evaluate", *common, *tiny, "--set", "datasets.0.split.val_fraction=0", cwd=tmp_path
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no dataset has cases in the 'val' split; --split all" in done.stderr
