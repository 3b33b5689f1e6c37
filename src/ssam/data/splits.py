"""Train / validation / test splits, always by case (a volume's slices never straddle), and by
group where cases are slices or frames of one patient or sequence.

Which split (``SplitConfig.source``):
- ``auto`` (default): the dataset's own split where it ships one (nnU-Net ``splits_final.json``,
  fold ``fold``), else a seeded fraction.
- ``dataset``: fold ``fold`` of ``splits_final.json`` (a list of {"train": [...], "val": [...]});
  an error if the file is absent.
- ``fraction``: a permutation of the sorted groups drawn from ``seed`` (the same seed gives the
  same split whatever order the cases were discovered in).

Groups (``SplitConfig.group_pattern``): ``auto`` (default) keeps together the 2D cases that
name one patient, case or sequence (``infer_groups``), by the first of:

1. a patient-like token anywhere in the name: ``patient0001``, ``case_00012``, ``sub-01``,
   ``P12``, ``pat3`` (a keyword, an optional ``_``/``-``, a number; ``ID_TOKEN``), so
   ``mirrored_patient0001_2CH_ES`` and ``patient0001_4CH_ED`` are one group;
2. an id with a digit before a trailing slice or frame number (``DEFAULT_GROUP_PATTERN``:
   ``curvas_10001_458`` and ``curvas_10001_509``; ``seq12_frame003`` and ``seq12_frame004``);
3. a digit-bearing token (not the trailing number) that several files share: ``0001`` of
   ``0001_2CH_ES`` and ``0001_4CH_ED``.

An id from 2 or 3 that more than half of the names share is a dataset prefix (``X2017`` of
``X2017_001``, ``X2017_002``, ...), not a patient: the next rule is tried. ``testA_25``
and hashes stay alone; volumes are their own group. ``none``: every case alone. Any other
value: a regex whose first group (or whole match) names the group.

When each 2D case is its own group, a seeded split says so loudly (unless ``none`` asked for
it), and the validation images are compared with the training images by small fingerprints
(``ssam.data.fingerprints``): how many have a near-duplicate in training is a
``SplitLeakWarning``. Test: the nnU-Net
``imagesTs`` (+ ``labelsTs``) cases, passed in as ``test_cases``.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssam.config.data import SplitConfig
from ssam.data.cases import Case
from ssam.data.fingerprints import find_near_duplicates
from ssam.data.io import read_header
from ssam.errors import DataError

SPLITS_FILE = "splits_final.json"
RUN_SPLIT_FILE = "split.json"  # a run folder's record of the cases of each side (training)
# PATIENT_SLICE: an id holding a digit, then "_" or "-", optional letters, and a number.
DEFAULT_GROUP_PATTERN = r"^(.*\d.*)[_-][A-Za-z]*\d+$"
# A patient-like token anywhere in a name: keyword, optional separator, number, on its own.
ID_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])(patient|subject|subj|case|pat|sub|pt|p)[_-]?(\d+)(?![A-Za-z0-9])",
    re.IGNORECASE,
)
PREFIX_SHARE = 1 / 2  # an id of rule 2 or 3 shared by more of the names is a dataset prefix
MAX_CHECKED = (500, 3000)  # validation, training images fingerprinted at most (evenly spread)
_SPLIT_STREAM = 2  # keeps split seeds apart from other seeded streams


class SplitLeakWarning(UserWarning):
    """Names suggest groups (patients, sequences) that the split puts on both sides."""


@dataclass(frozen=True)
class DatasetSplit:
    """Cases per role; a case id appears in at most one of them.

    ``source`` says how the split was made (e.g. ``splits_final.json fold 0``), ``grouping``
    how cases were grouped, ``group_of`` maps each case id to its group.
    """

    train: list[Case]
    val: list[Case]
    test: list[Case] = field(default_factory=list)
    source: str = "given"
    grouping: str = "none"
    group_of: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict:
        """Source, grouping, and cases and groups per side: what a run prints and stores."""
        sides = {}
        for role in ("train", "val", "test"):
            cases = getattr(self, role)
            groups = {self.group_of.get(c.case_id, c.case_id) for c in cases}
            sides[role] = {"cases": len(cases), "groups": len(groups)}
        return {"source": self.source, "grouping": self.grouping, **sides}

    def summary_line(self) -> str:
        """``splits_final.json fold 0; groups: none; train 28 cases (28 groups), val 8 ...``"""
        d = self.describe()
        sides = ", ".join(
            f"{role} {d[role]['cases']} cases ({d[role]['groups']} groups)"
            for role in ("train", "val", "test")
            if d[role]["cases"] or role != "test"
        )
        return f"{d['source']}; grouped by {d['grouping']}; {sides}"


def group_key(case_id: str, pattern: str | None) -> str:
    """The group a case belongs to: regex group 1 (or the whole match), else the case id."""
    if pattern is None:
        return case_id
    match = re.search(pattern, case_id)
    if match is None:
        return case_id
    return match.group(1) if match.re.groups else match.group(0)


def _is_volume(case: Case) -> bool:
    return not read_header(case.image_paths[0]).is_2d


def find_id_token(case_id: str) -> str | None:
    """``mirrored_patient0001_2CH_ES`` -> ``patient0001``, ``sub-01_T1w`` -> ``sub01``: the
    first patient-like token (``ID_TOKEN``), lower-case, without its separator; else None."""
    match = ID_TOKEN.search(case_id)
    return None if match is None else f"{match.group(1).lower()}{match.group(2)}"


def _tokens(case_id: str) -> list[str]:
    """Digit-bearing parts of a name (split at ``_ - . space``), less a trailing plain number
    (the slice or frame)."""
    parts = [p for p in re.split(r"[_\-. ]+", case_id) if p]
    if parts and parts[-1].isdigit():
        parts = parts[:-1]
    return [p for p in parts if any(ch.isdigit() for ch in p)]


def _name_keys(ids: Sequence[str]) -> dict[str, str]:
    """Case id -> group key by the rules of the module doc (the id itself: alone)."""
    limit = max(2, PREFIX_SHARE * len(ids))
    pattern_keys = {i: group_key(i, DEFAULT_GROUP_PATTERN) for i in ids}
    pattern_counts = Counter(pattern_keys.values())
    token_counts = Counter(t for i in ids for t in set(_tokens(i)))
    keys = {}
    for case_id in ids:
        key = find_id_token(case_id)
        if key is None and 2 <= pattern_counts[pattern_keys[case_id]] <= limit:
            key = pattern_keys[case_id]
        if key is None:
            shared = [t for t in _tokens(case_id) if 2 <= token_counts[t] <= limit]
            key = min(shared, key=lambda t: token_counts[t], default=None)
        keys[case_id] = case_id if key is None else key
    return keys


def infer_groups(
    cases: Sequence[Case], is_volume: Callable[[Case], bool] = _is_volume
) -> dict[str, str] | None:
    """Case id -> group from the names of the 2D cases (volumes alone; see the module doc),
    or None where the names suggest no group of two or more cases, or everything in one."""
    if len(set(_name_keys([c.case_id for c in cases]).values())) == len(cases):
        return None  # no shared id even counting volumes: no header needs reading
    flat = [c.case_id for c in cases if not is_volume(c)]
    keys = _name_keys(flat)
    groups = {c.case_id: keys.get(c.case_id, c.case_id) for c in cases}
    distinct = set(groups.values())
    if len(distinct) == len(groups) or len(distinct) < 2:
        return None
    return groups


def describe_groups(groups: dict[str, str]) -> str:
    """``auto: name ids, e.g. mirrored_patient0001_2CH_ES -> patient0001 (12 groups)``."""
    grouped = [(case, key) for case, key in groups.items() if case != key]
    example = f", e.g. {grouped[0][0]} -> {grouped[0][1]}" if grouped else ""
    return f"auto: name ids{example} ({len(set(groups.values()))} groups)"


def resolve_groups(
    cases: Sequence[Case], pattern: str | None, is_volume: Callable[[Case], bool] = _is_volume
) -> tuple[dict[str, str], str]:
    """(case id -> group, how) for ``SplitConfig.group_pattern`` ("auto", "none" or a regex)."""
    if pattern in (None, "none"):
        return {c.case_id: c.case_id for c in cases}, "none (each case alone)"
    if pattern == "auto":
        inferred = infer_groups(cases, is_volume)
        if inferred is None:
            return {c.case_id: c.case_id for c in cases}, "auto: none found (each case alone)"
        return inferred, describe_groups(inferred)
    return {c.case_id: group_key(c.case_id, pattern) for c in cases}, f"pattern {pattern}"


def split_by_fraction(
    cases: Sequence[Case],
    val_fraction: float,
    seed: int,
    group_pattern: str | None = None,
    groups: dict[str, str] | None = None,
) -> tuple[list[Case], list[Case]]:
    """Seeded (train, val) split of whole cases, or whole groups of cases (``groups``: case
    id -> group; else ``group_pattern``, a regex on the case id).

    ``round(val_fraction * n_groups)`` groups go to validation, at least one when
    val_fraction > 0 and at least one group stays in training. Output keeps input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if groups is None:
        groups = {c.case_id: group_key(c.case_id, group_pattern) for c in cases}
    names = sorted({groups[c.case_id] for c in cases})
    n_val = round(val_fraction * len(names))
    if val_fraction > 0 and len(names) >= 2:
        n_val = min(max(n_val, 1), len(names) - 1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_STREAM]))
    val_groups = {names[i] for i in rng.permutation(len(names))[:n_val]}
    val = [c for c in cases if groups[c.case_id] in val_groups]
    train = [c for c in cases if groups[c.case_id] not in val_groups]
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


def find_straddling_groups(
    train: Sequence[Case], val: Sequence[Case], groups: dict[str, str]
) -> list[str]:
    """Sorted groups with cases on both sides of a (train, val) split."""
    return sorted({groups[c.case_id] for c in train} & {groups[c.case_id] for c in val})


def warn_if_leaking(split: DatasetSplit, suggested: dict[str, str] | None, name: str) -> None:
    """A ``SplitLeakWarning`` when ``suggested`` groups (from the names) straddle the split."""
    if suggested is None:
        return
    straddling = find_straddling_groups(split.train, split.val, suggested)
    if straddling:
        warnings.warn(
            f"dataset {name}: the split ({split.source}, grouped by {split.grouping}) puts "
            f"cases of {len(straddling)} name groups on both sides, e.g. {straddling[:3]}: "
            "if these are slices or frames of one patient or sequence, validation scores "
            "leak; group them with datasets.N.split.group_pattern=auto (or a regex)",
            SplitLeakWarning,
            stacklevel=3,
        )


def _spread(cases: Sequence[Case], most: int) -> list[Case]:
    """At most ``most`` of ``cases``, evenly spread over them."""
    if len(cases) <= most:
        return list(cases)
    return [cases[i] for i in np.linspace(0, len(cases) - 1, most).round().astype(int)]


def warn_if_each_alone(split: DatasetSplit, flat: Sequence[Case], name: str, loud: bool) -> None:
    """When no two 2D cases share a group: with ``loud`` (a seeded split whose grouping was
    not set to none), that each case is its own group; and, whatever made the split, how many
    validation images have a near-duplicate in training (``ssam.data.fingerprints``). Both
    ``SplitLeakWarning``s."""
    keys = [split.group_of.get(c.case_id, c.case_id) for c in flat]
    if len(flat) < 2 or len(set(keys)) < len(keys):
        return
    fix = (
        "if one patient, case or video has several images, give their id to "
        "datasets.N.split.group_pattern (a regex whose first group captures it)"
    )
    flat_ids = {c.case_id for c in flat}
    val = [c for c in split.val if c.case_id in flat_ids]
    train = [c for c in split.train if c.case_id in flat_ids]
    if loud and val:
        warnings.warn(
            f"dataset {name}: EACH CASE IS ITS OWN GROUP (grouped by {split.grouping}): "
            f"no patient, case or video id in its {len(flat)} image names (e.g. "
            f"{flat[0].case_id}), so one patient's or video's images can sit in training "
            f"and validation; {fix}",
            SplitLeakWarning,
            stacklevel=3,
        )
    checked, against = _spread(val, MAX_CHECKED[0]), _spread(train, MAX_CHECKED[1])
    near = find_near_duplicates(checked, against)
    if near:
        warnings.warn(
            f"dataset {name}: {len(near)} of {len(checked)} validation images checked have a "
            f"near-duplicate in training (e.g. {near[0].case_id}; small image fingerprints): "
            f"frames of one video or images of one patient on both sides make validation "
            f"scores leak; {fix}",
            SplitLeakWarning,
            stacklevel=3,
        )


def split_dataset(
    cases: Sequence[Case],
    config: SplitConfig,
    root: Path | str,
    test_cases: Sequence[Case] = (),
    name: str | None = None,
) -> DatasetSplit:
    """Split one dataset's cases as configured; ``test_cases`` (imagesTs) become the test set.

    Warns (``SplitLeakWarning``) when the names suggest groups the split ignores, and when
    each 2D case is its own group (``warn_if_each_alone``).

    Raises:
        DataError: source "dataset" without a splits_final.json in ``root``.
    """
    path = Path(root) / SPLITS_FILE
    is_volume = functools.cache(_is_volume)  # each header read once
    folds = read_nnunet_splits(root) if config.source in ("auto", "dataset") else None
    if config.source == "dataset" and folds is None:
        raise DataError(
            f"{path}: split source 'dataset' needs this file; use a val_fraction split instead"
        )
    groups, grouping = resolve_groups(cases, config.group_pattern, is_volume)
    if folds is not None:
        train, val = split_by_fold(cases, folds, config.fold, path)
        source = f"{SPLITS_FILE} fold {config.fold}"
    else:
        train, val = split_by_fraction(cases, config.val_fraction, config.seed, groups=groups)
        source = f"seeded fraction {config.val_fraction} (seed {config.seed})"
    split = DatasetSplit(train, val, list(test_cases), source, grouping, groups)
    suggested = groups if grouping.startswith("auto: name") else infer_groups(cases, is_volume)
    warn_if_leaking(split, suggested, name or Path(root).name)
    if suggested is None:
        flat = [c for c in cases if not is_volume(c)]
        loud = folds is None and config.group_pattern not in (None, "none")
        warn_if_each_alone(split, flat, name or Path(root).name, loud)
    return split
