"""Train / validation / test splits, always by case (a volume's slices never straddle).

- Seeded fraction: a permutation of the sorted case ids (or of groups of case ids, e.g.
  the patient of 2D slices, via a regex) drawn from ``seed``: the same seed gives the same
  split whatever order the cases were discovered in.
- The dataset's own split: fold ``fold`` of nnU-Net's ``splits_final.json`` (a list of
  {"train": [...], "val": [...]}) in the dataset folder.
- Test: the nnU-Net ``imagesTs`` cases, passed in as ``test_cases``.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssam.config.data import SplitConfig
from ssam.data.cases import Case
from ssam.errors import DataError

SPLITS_FILE = "splits_final.json"
_SPLIT_STREAM = 2  # keeps split seeds apart from other seeded streams


@dataclass(frozen=True)
class DatasetSplit:
    """Cases per role; a case id appears in at most one of them."""

    train: list[Case]
    val: list[Case]
    test: list[Case] = field(default_factory=list)


def group_key(case_id: str, pattern: str | None) -> str:
    """The group a case belongs to: regex group 1 (or the whole match), else the case id."""
    if pattern is None:
        return case_id
    match = re.search(pattern, case_id)
    if match is None:
        return case_id
    return match.group(1) if match.re.groups else match.group(0)


def split_by_fraction(
    cases: Sequence[Case], val_fraction: float, seed: int, group_pattern: str | None = None
) -> tuple[list[Case], list[Case]]:
    """Seeded (train, val) split of whole cases, or whole groups of cases.

    ``round(val_fraction * n_groups)`` groups go to validation, at least one when
    val_fraction > 0 and at least one group stays in training. Output keeps input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups = sorted({group_key(c.case_id, group_pattern) for c in cases})
    n_val = round(val_fraction * len(groups))
    if val_fraction > 0 and len(groups) >= 2:
        n_val = min(max(n_val, 1), len(groups) - 1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_STREAM]))
    val_groups = {groups[i] for i in rng.permutation(len(groups))[:n_val]}
    val = [c for c in cases if group_key(c.case_id, group_pattern) in val_groups]
    train = [c for c in cases if group_key(c.case_id, group_pattern) not in val_groups]
    return train, val


def read_nnunet_splits(root: Path | str) -> list[dict[str, list[str]]] | None:
    """Folds of ``root/splits_final.json``, or None if the file is absent."""
    path = Path(root) / SPLITS_FILE
    if not path.is_file():
        return None
    try:
        folds = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read splits: {exc}") from exc
    if not isinstance(folds, list) or not all(
        isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("val"), list)
        for f in folds
    ):
        raise DataError(f"{path}: expected a list of {{'train': [...], 'val': [...]}} folds")
    return folds


def split_by_fold(
    cases: Sequence[Case], folds: list[dict[str, list[str]]], fold: int, source: Path | str
) -> tuple[list[Case], list[Case]]:
    """(train, val) as listed by one fold; ids not in the cases and cases in neither list
    are warned about (a case skipped as bad is then simply missing)."""
    if not 0 <= fold < len(folds):
        raise DataError(f"{source}: fold {fold} requested, the file has {len(folds)} folds")
    train_ids, val_ids = set(folds[fold]["train"]), set(folds[fold]["val"])
    both = sorted(train_ids & val_ids)
    if both:
        raise DataError(f"{source}: fold {fold} lists {both[:5]} in both train and val")
    known = {c.case_id for c in cases}
    unknown = sorted((train_ids | val_ids) - known)
    if unknown:
        warnings.warn(f"{source}: fold {fold} names unknown cases {unknown[:5]}", stacklevel=2)
    unassigned = sorted(known - train_ids - val_ids)
    if unassigned:
        warnings.warn(
            f"{source}: cases {unassigned[:5]} are in no list of fold {fold}; left out",
            stacklevel=2,
        )
    return [c for c in cases if c.case_id in train_ids], [c for c in cases if c.case_id in val_ids]


def split_dataset(
    cases: Sequence[Case],
    config: SplitConfig,
    root: Path | str,
    test_cases: Sequence[Case] = (),
) -> DatasetSplit:
    """Split one dataset's cases as configured; ``test_cases`` (imagesTs) become the test set.

    Raises:
        DataError: source "dataset" without a splits_final.json in ``root``.
    """
    if config.source == "dataset":
        folds = read_nnunet_splits(root)
        if folds is None:
            raise DataError(
                f"{Path(root) / SPLITS_FILE}: split source 'dataset' needs this file; "
                "use a val_fraction split instead"
            )
        train, val = split_by_fold(cases, folds, config.fold, Path(root) / SPLITS_FILE)
    else:
        train, val = split_by_fraction(
            cases, config.val_fraction, config.seed, config.group_pattern
        )
    return DatasetSplit(train=train, val=val, test=list(test_cases))
