"""Collect per-case metrics and write ``metrics.csv``, ``summary.json`` and a terminal table.

``MetricsTable`` is the accumulator around the pure ``ssam.evaluation.metrics.compute_case_metrics``:
one row per (case, label), optional extra columns (e.g. ``dataset``), then per-label
aggregates. NaN HD95 values (one of ground truth / prediction empty, see
``ssam.evaluation.metrics.EMPTY_GT_POLICY``) are kept in the CSV and left out of HD95 statistics, with
their count reported. Every file is written atomically (temp file in the same folder, then
``os.replace``), so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssam.atomic import write_text_atomic
from ssam.evaluation.metrics import EMPTY_GT_POLICY, METRIC_NAMES

__all__ = ["CORE_COLUMNS", "MetricsRow", "MetricsTable", "write_text_atomic"]

CORE_COLUMNS: tuple[str, ...] = ("case_id", "label", *METRIC_NAMES, "gt_empty", "pred_empty")


@dataclass(frozen=True)
class MetricsRow:
    """One (case, label) result. ``hd95`` may be NaN; ``extra`` holds optional columns."""

    case_id: str
    label: str
    dice: float
    iou: float
    hd95: float
    gt_empty: bool
    pred_empty: bool
    extra: Mapping[str, str] = field(default_factory=dict)

    def as_csv_dict(self) -> dict[str, str]:
        """Column name -> text: floats to 10 significant digits, NaN as ``nan``, bools as
        ``true``/``false``."""
        out = {"case_id": self.case_id, "label": self.label}
        for name in METRIC_NAMES:
            out[name] = _format_float(getattr(self, name))
        out["gt_empty"] = "true" if self.gt_empty else "false"
        out["pred_empty"] = "true" if self.pred_empty else "false"
        return {**out, **self.extra}


def _format_float(value: float) -> str:
    return "nan" if math.isnan(value) else format(value, ".10g")


def _stats(values: list[float]) -> dict[str, float | int | None]:
    """Mean, population std (ddof=0), median and count of the non-NaN values (None if none)."""
    finite = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": None, "std": None, "median": None, "n": 0}
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "median": float(np.median(finite)),
        "n": int(finite.size),
    }


def _summarise(rows: list[MetricsRow]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "n_cases": len(rows),
        "n_gt_empty": sum(r.gt_empty for r in rows),
        "n_pred_empty": sum(r.pred_empty for r in rows),
        "n_hd95_excluded": sum(math.isnan(r.hd95) for r in rows),
    }
    for name in METRIC_NAMES:
        summary[name] = _stats([getattr(r, name) for r in rows])
    return summary


class MetricsTable:
    """Accumulates per-(case, label) metrics; writes ``metrics.csv`` and ``summary.json``.

    Args:
        hd95_unit: unit of the HD95 column, recorded in ``summary.json`` and the table header
            (``"mm"`` for volumes with spacing, ``"px"`` for 2D images).

    Example::

        table = MetricsTable(hd95_unit="mm")
        table.add("case_001", "liver", compute_case_metrics(pred, gt, spacing), dataset="LiTS")
        table.write(run_dir)  # run_dir/metrics.csv, run_dir/summary.json
        print(table.render())
    """

    def __init__(self, hd95_unit: str = "mm", context: dict[str, Any] | None = None) -> None:
        self.hd95_unit = hd95_unit
        self.context = dict(context or {})  # e.g. the model and split scored, for summary.json
        self._rows: list[MetricsRow] = []
        self._keys: set[tuple[Any, ...]] = set()
        self._extra_columns: list[str] = []

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> list[MetricsRow]:
        """The rows in insertion order (a copy of the list)."""
        return list(self._rows)

    @property
    def labels(self) -> list[str]:
        """Label names in order of first appearance."""
        return list(dict.fromkeys(r.label for r in self._rows))

    @property
    def columns(self) -> list[str]:
        """CSV columns: ``CORE_COLUMNS`` then extra columns in order of first appearance."""
        return [*CORE_COLUMNS, *self._extra_columns]

    def add(
        self, case_id: str, label: str, metrics: Mapping[str, float | bool], **extra: object
    ) -> MetricsRow:
        """Add one row.

        Args:
            case_id: case identifier (e.g. the nnU-Net case name).
            label: label name.
            metrics: a ``compute_case_metrics`` result: ``dice``, ``iou``, ``hd95`` (NaN
                allowed), ``gt_empty``, ``pred_empty``.
            **extra: optional extra columns (e.g. ``dataset="LiTS"``), stored as text.

        Raises:
            ValueError: a key is missing, an extra column shadows a core column, a value is
                out of range, or the same (case, label, extras) was already added.
        """
        missing = [k for k in (*METRIC_NAMES, "gt_empty", "pred_empty") if k not in metrics]
        if missing:
            raise ValueError(f"metrics for case {case_id!r}, label {label!r} lack {missing}")
        clash = sorted(set(extra) & set(CORE_COLUMNS))
        if clash:
            raise ValueError(f"extra columns {clash} clash with the core columns {CORE_COLUMNS}")
        dice, iou, hd95 = (float(metrics[k]) for k in METRIC_NAMES)
        if not (0.0 <= dice <= 1.0 and 0.0 <= iou <= 1.0) or hd95 < 0.0 or math.isinf(hd95):
            raise ValueError(
                f"metrics out of range for case {case_id!r}, label {label!r}: "
                f"dice={dice}, iou={iou}, hd95={hd95}"
            )
        extra_text = {k: str(v) for k, v in extra.items()}
        key = (str(case_id), str(label), tuple(sorted(extra_text.items())))
        if key in self._keys:
            raise ValueError(f"case {case_id!r}, label {label!r} {extra_text} was already added")
        row = MetricsRow(
            str(case_id),
            str(label),
            dice,
            iou,
            hd95,
            bool(metrics["gt_empty"]),
            bool(metrics["pred_empty"]),
            extra_text,
        )
        self._keys.add(key)
        self._rows.append(row)
        self._extra_columns.extend(k for k in extra_text if k not in self._extra_columns)
        return row

    def summary(self) -> dict[str, Any]:
        """Aggregates as a JSON-ready dict.

        ``labels[name]`` has ``n_cases``, ``n_gt_empty``, ``n_pred_empty``,
        ``n_hd95_excluded`` and, per metric, ``mean``, ``std`` (population, ddof=0),
        ``median``, ``n`` (values used; ``None`` statistics when there are none). ``all``
        pools every row. Also records the empty-GT policy text and the HD95 unit.
        """
        return {
            **self.context,
            "empty_gt_policy": EMPTY_GT_POLICY,
            "hd95_unit": self.hd95_unit,
            "labels": {
                label: _summarise([r for r in self._rows if r.label == label])
                for label in self.labels
            },
            "all": _summarise(self._rows),
        }

    def to_csv_text(self) -> str:
        """The CSV content: a header of ``columns`` and one line per row, ``\\n`` endings."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(r.as_csv_dict() for r in self._rows)
        return buffer.getvalue()

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write the rows to ``path`` (atomic)."""
        return write_text_atomic(path, self.to_csv_text())

    def write_summary(self, path: str | os.PathLike[str]) -> Path:
        """Write ``summary()`` as JSON to ``path`` (atomic; strict JSON, no NaN)."""
        text = json.dumps(self.summary(), indent=2, allow_nan=False) + "\n"
        return write_text_atomic(path, text)

    def write(self, out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``out_dir/metrics.csv`` and ``out_dir/summary.json``; return both paths."""
        out_dir = Path(out_dir)
        return self.write_csv(out_dir / "metrics.csv"), self.write_summary(out_dir / "summary.json")

    def render(self, width: int = 110) -> str:
        """A plain-text table (no colour codes): one line per label, then all labels pooled."""
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        summary = self.summary()
        table = Table(title=f"Metrics per label ({len(self)} rows)", title_justify="left")
        for header in ("label", "cases", "GT empty", "Dice", "IoU", f"HD95 [{self.hd95_unit}]"):
            table.add_column(escape(header), justify="left" if header == "label" else "right")
        table.add_column("HD95 excluded", justify="right")
        groups = [*summary["labels"].items(), ("all", summary["all"])]
        for i, (label, s) in enumerate(groups):
            table.add_row(
                escape(label),
                str(s["n_cases"]),
                str(s["n_gt_empty"]),
                *(_mean_std(s[name]) for name in METRIC_NAMES),
                str(s["n_hd95_excluded"]),
                end_section=i == len(groups) - 2,
            )
        buffer = io.StringIO()
        Console(file=buffer, width=width, color_system=None, force_terminal=False).print(table)
        return buffer.getvalue()


def _mean_std(stats: Mapping[str, Any]) -> str:
    if stats["mean"] is None:
        return "-"
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"
