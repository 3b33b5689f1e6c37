import csv
import json
import math
import os

import numpy as np
import pytest

from ssam.evaluation.metrics import EMPTY_GT_POLICY, compute_case_metrics
from ssam.evaluation.report import CORE_COLUMNS, MetricsTable, write_text_atomic


def _m(dice, iou, hd95, gt_empty=False, pred_empty=False):
    return {"dice": dice, "iou": iou, "hd95": hd95, "gt_empty": gt_empty, "pred_empty": pred_empty}


def _table() -> MetricsTable:
    table = MetricsTable(hd95_unit="px")
    table.add("c1", "liver", _m(0.9, 0.8, 2.0), dataset="A")
    table.add("c2", "liver", _m(0.7, 0.6, 4.0), dataset="A")
    table.add("c3", "liver", _m(0.5, 0.4, 9.0), dataset="B")
    table.add("c1", "lesion", _m(1.0, 1.0, 0.0, gt_empty=True, pred_empty=True), dataset="A")
    table.add("c2", "lesion", _m(0.0, 0.0, math.nan, gt_empty=True), dataset="A")
    table.add("c3", "lesion", _m(0.6, 0.5, 3.0), dataset="B")
    return table


def test_csv_round_trip(tmp_path):
    table = _table()
    csv_path, _ = table.write(tmp_path)
    assert csv_path == tmp_path / "metrics.csv"
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*CORE_COLUMNS, "dataset"]
    assert len(rows) == 6
    assert rows[0]["case_id"] == "c1" and rows[0]["label"] == "liver"
    assert float(rows[1]["dice"]) == pytest.approx(0.7)
    assert math.isnan(float(rows[4]["hd95"]))
    assert rows[4]["gt_empty"] == "true" and rows[4]["pred_empty"] == "false"
    assert [r["dataset"] for r in rows] == ["A", "A", "B", "A", "A", "B"]


def test_summary_json(tmp_path):
    _, json_path = _table().write(tmp_path)
    with open(json_path) as f:
        summary = json.load(f)
    assert summary["empty_gt_policy"] == EMPTY_GT_POLICY
    assert summary["hd95_unit"] == "px"
    liver = summary["labels"]["liver"]
    assert liver["n_cases"] == 3 and liver["n_gt_empty"] == 0 and liver["n_hd95_excluded"] == 0
    assert liver["dice"]["mean"] == pytest.approx(0.7)
    assert liver["dice"]["std"] == pytest.approx(np.std([0.9, 0.7, 0.5]))
    assert liver["hd95"]["median"] == pytest.approx(4.0)
    lesion = summary["labels"]["lesion"]
    assert lesion["n_cases"] == 3 and lesion["n_gt_empty"] == 2 and lesion["n_pred_empty"] == 1
    assert lesion["n_hd95_excluded"] == 1
    assert lesion["hd95"] == {"mean": 1.5, "std": 1.5, "median": 1.5, "n": 2}
    assert lesion["dice"]["n"] == 3 and lesion["dice"]["mean"] == pytest.approx(1.6 / 3)
    assert summary["all"]["n_cases"] == 6 and summary["all"]["n_hd95_excluded"] == 1


def test_all_hd95_excluded_gives_null_not_nan(tmp_path):
    table = MetricsTable()
    table.add("c1", "lesion", _m(0.0, 0.0, math.nan, gt_empty=True))
    table.write_summary(tmp_path / "summary.json")
    text = (tmp_path / "summary.json").read_text()

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    hd95 = json.loads(text, parse_constant=refuse)["labels"]["lesion"]["hd95"]
    assert hd95 == {"mean": None, "std": None, "median": None, "n": 0}


def test_accepts_compute_case_metrics_output(tmp_path):
    gt = np.zeros((6, 6), dtype=bool)
    gt[1:4, 1:4] = True
    table = MetricsTable(hd95_unit="px")
    table.add("c1", "liver", compute_case_metrics(gt, gt))
    table.add("c1", "kidney", compute_case_metrics(gt, np.zeros_like(gt)))
    summary = table.summary()
    assert summary["labels"]["kidney"]["n_gt_empty"] == 1
    assert summary["labels"]["liver"]["dice"]["mean"] == 1.0


def test_render_plain_text():
    table = _table()
    table.add("c1", "vessel [left]", _m(0.5, 0.3, 1.0))  # brackets are not rich markup
    text = table.render()
    assert "liver" in text and "vessel [left]" in text and "all" in text
    assert "0.700 ± 0.163" in text  # liver Dice
    assert "HD95 [px]" in text
    assert "\x1b[" not in text  # no ANSI escape codes
    assert MetricsTable().render()  # an empty table renders too


def test_rejects_bad_rows():
    table = MetricsTable()
    table.add("c1", "liver", _m(0.5, 0.3, 1.0))
    with pytest.raises(ValueError, match="already added"):
        table.add("c1", "liver", _m(0.5, 0.3, 1.0))
    with pytest.raises(ValueError, match="lack"):
        table.add("c2", "liver", {"dice": 0.5})
    with pytest.raises(ValueError, match="clash"):
        table.add("c2", "liver", _m(0.5, 0.3, 1.0), dice="x")
    with pytest.raises(ValueError, match="out of range"):
        table.add("c2", "liver", _m(1.5, 0.3, 1.0))
    assert len(table) == 1


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_text_atomic(target, "first")
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    assert os.listdir(target.parent) == ["out.txt"]


def test_atomic_write_keeps_old_file_on_error(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_text_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["summary.json"]
