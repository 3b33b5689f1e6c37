"""Find the cases of a dataset on disk and check them before training.

Two layouts:

- ``folder``: ``images/NAME.ext`` + ``masks/NAME.ext`` matched by file stem; masks are
  binary (0/255 or 0/1), one label name given by the user.
- ``nnunet`` (nnU-Net v2, also MSD-style ``dataset.json``): ``dataset.json`` with
  ``labels`` (name -> int), ``channel_names`` and ``file_ending``; ``imagesTr/CASE_XXXX``
  (one file per channel), ``labelsTr/CASE``; optional ``imagesTs`` (test, no labels).

Discovery only lists files (pairing problems are found there); `load_cases` then runs
`ssam.data.cases.validate_cases`, which reads headers (volumes) or decodes (2D, cheap) to
find corrupt files, size mismatches and label values that dataset.json does not declare. With ``skip_bad=True`` a bad case is dropped
with a warning naming it instead of raising a DataError.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ssam.config.data import DatasetConfig
from ssam.data.cases import Case, report_bad_case, validate_cases
from ssam.data.io import SUPPORTED_SUFFIXES, file_suffix
from ssam.errors import DataError

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class NnunetInfo:
    """The parts of a dataset.json used here."""

    name: str
    labels: dict[str, int]
    channel_names: dict[int, str]
    file_ending: str


def _stem(path: Path) -> str:
    return path.name[: -len(file_suffix(path))] if file_suffix(path) else path.name


def _listing(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: {what} folder not found")
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _by_stem(folder: Path, what: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in _listing(folder, what):
        if file_suffix(path) not in SUPPORTED_SUFFIXES:
            continue
        stem = _stem(path)
        if stem in found:
            raise DataError(f"{path}: two {what} share the name '{stem}' ({found[stem].name})")
        found[stem] = path
    return found


def discover_folder_cases(
    root: Path | str,
    label: str,
    *,
    images_dir: str = "images",
    masks_dir: str = "masks",
    dataset_name: str | None = None,
    skip_bad: bool = False,
) -> list[Case]:
    """Pair ``root/images_dir`` and ``root/masks_dir`` files by stem (extensions may differ).

    Returns:
        Cases sorted by case id, each with labels {label: 1} and binary=True.

    Raises:
        DataError: an image without mask or a mask without image (unless skip_bad), or an
            empty dataset.
    """
    root = Path(root)
    images = _by_stem(root / images_dir, "images")
    masks = _by_stem(root / masks_dir, "masks")
    for stem in sorted(set(masks) - set(images)):
        report_bad_case(f"{masks[stem]}: mask without image in {root / images_dir}", skip_bad)
    cases = []
    for stem, image in sorted(images.items()):
        if stem not in masks:
            report_bad_case(f"{image}: image without mask in {root / masks_dir}", skip_bad)
            continue
        name = dataset_name or root.resolve().name
        cases.append(Case(stem, (image,), masks[stem], {label: 1}, name, binary=True))
    if not cases:
        raise DataError(f"{root}: no image/mask pairs found in {images_dir}/ and {masks_dir}/")
    return cases


def _int_keys(mapping: dict, path: Path, key: str) -> dict[int, str]:
    try:
        return {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: '{key}' keys must be channel indices: {exc}") from exc


def _parse_labels(raw: object, path: Path) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: 'labels' must be a non-empty mapping of name -> value")
    if all(isinstance(v, str) for v in raw.values()):  # MSD style: {"0": "background"}
        raw = {name: value for value, name in raw.items()}
    labels = {}
    for name, value in raw.items():
        if isinstance(value, list | tuple):
            raise DataError(f"{path}: region label '{name}' ({value}) is not supported")
        try:
            labels[str(name)] = int(value)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}: label '{name}' has a non-integer value {value!r}") from exc
    if len(set(labels.values())) != len(labels):
        raise DataError(f"{path}: two labels share one value: {labels}")
    return labels


def read_dataset_json(root: Path | str) -> NnunetInfo:
    """Parse ``root/dataset.json`` (nnU-Net v2; MSD's index -> name labels and 'modality')."""
    path = Path(root) / "dataset.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DataError(f"{path}: dataset.json not found (needed by the nnunet layout)") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read dataset.json: {exc}") from exc
    channels = data.get("channel_names", data.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise DataError(f"{path}: 'channel_names' must map channel index -> name")
    return NnunetInfo(
        name=str(data.get("name", Path(root).resolve().name)),
        labels=_parse_labels(data.get("labels"), path),
        channel_names=_int_keys(channels, path, "channel_names"),
        file_ending=str(data.get("file_ending", ".nii.gz")),
    )


def resolve_channels(
    channels: list[int | str] | None, info: NnunetInfo, root: Path
) -> tuple[int, ...]:
    """Channel indices from indices or names (case-insensitive); all channels if None."""
    if channels is None:
        return tuple(sorted(info.channel_names))
    by_name = {name.lower(): index for index, name in info.channel_names.items()}
    resolved = []
    for channel in channels:
        index = by_name.get(channel.lower()) if isinstance(channel, str) else channel
        if index is None or index not in info.channel_names:
            raise DataError(
                f"{root / 'dataset.json'}: unknown channel {channel!r} "
                f"(channels: {info.channel_names})"
            )
        resolved.append(index)
    return tuple(resolved)


def resolve_labels(names: list[str] | None, info: NnunetInfo, root: Path) -> dict[str, int]:
    """Label name -> value for the requested names (all but background if None)."""
    available = {n: v for n, v in info.labels.items() if v != 0}
    if names is None:
        return available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise DataError(
            f"{root / 'dataset.json'}: unknown label(s) {unknown} (labels: {sorted(available)})"
        )
    return {n: available[n] for n in names}


def _channel_files(folder: Path, ending: str, skip_bad: bool) -> dict[str, dict[int, Path]]:
    """{case: {channel: path}} from CASE_XXXX<ending> files."""
    found: dict[str, dict[int, Path]] = {}
    for path in _listing(folder, "images"):
        if not path.name.endswith(ending):
            continue
        match = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if match is None:
            report_bad_case(f"{path}: image name is not CASE_XXXX{ending}", skip_bad)
            continue
        found.setdefault(match["case"], {})[int(match["channel"])] = path
    return found


def discover_nnunet_cases(
    root: Path | str,
    *,
    channels: list[int | str] | None = None,
    labels: list[str] | None = None,
    subset: Literal["train", "test"] = "train",
    dataset_name: str | None = None,
    skip_bad: bool = False,
) -> list[Case]:
    """List the cases of an nnU-Net v2 / MSD dataset folder.

    Args:
        root: folder holding dataset.json, imagesTr/, labelsTr/ and optionally imagesTs/.
        channels: channel indices or names to use (default: all, in index order).
        labels: label names to train on (default: all but background).
        subset: "train" (imagesTr + labelsTr) or "test" (imagesTs; labelsTs if present,
            else no labels; an absent imagesTs gives an empty list).
        dataset_name: defaults to the folder name.
        skip_bad: warn and skip incomplete cases instead of raising.

    Returns:
        Cases sorted by case id.
    """
    root = Path(root)
    info = read_dataset_json(root)
    chosen = resolve_channels(channels, info, root)
    label_map = resolve_labels(labels, info, root)
    suffix = "Tr" if subset == "train" else "Ts"
    images_dir, labels_dir = root / f"images{suffix}", root / f"labels{suffix}"
    if subset == "test" and not images_dir.is_dir():
        return []
    files = _channel_files(images_dir, info.file_ending, skip_bad)
    has_labels = subset == "train" or labels_dir.is_dir()
    label_files = _label_files(labels_dir, info.file_ending) if has_labels else {}
    for case_id in sorted(set(label_files) - set(files)):
        message = f"{label_files[case_id]}: label map without image in {images_dir}"
        report_bad_case(message, skip_bad)
    template = Case(
        case_id="",
        image_paths=(),
        label_path=None,
        labels=label_map,
        dataset=dataset_name or root.resolve().name,
        declared_values=frozenset(info.labels.values()) | {0},
    )
    cases = []
    for case_id, by_channel in sorted(files.items()):
        missing = [c for c in chosen if c not in by_channel]
        if missing:
            name = f"{case_id}_{missing[0]:04d}{info.file_ending}"
            message = f"{images_dir / name}: channel file missing for case '{case_id}'"
            report_bad_case(message, skip_bad)
        elif has_labels and case_id not in label_files:
            message = f"{by_channel[chosen[0]]}: image without label map in {labels_dir}"
            report_bad_case(message, skip_bad)
        else:
            paths = tuple(by_channel[c] for c in chosen)
            label_path = label_files.get(case_id)
            cases.append(
                replace(template, case_id=case_id, image_paths=paths, label_path=label_path)
            )
    if not cases and subset == "train":
        raise DataError(f"{root}: no cases found in imagesTr/ (file ending {info.file_ending})")
    return cases


def _label_files(folder: Path, ending: str) -> dict[str, Path]:
    return {
        p.name[: -len(ending)]: p for p in _listing(folder, "labels") if p.name.endswith(ending)
    }


def load_cases(
    config: DatasetConfig, subset: Literal["train", "test"] = "train", check_values: bool = True
) -> list[Case]:
    """Discover and validate the cases of one configured dataset.

    The folder layout has no test subset (an empty list is returned for "test").
    """
    if config.layout == "folder":
        if subset == "test":
            return []
        cases = discover_folder_cases(
            config.path,
            config.label,  # type: ignore[arg-type]  # checked by DatasetConfig
            images_dir=config.images_dir,
            masks_dir=config.masks_dir,
            dataset_name=config.dataset_name,
            skip_bad=config.skip_bad,
        )
    else:
        cases = discover_nnunet_cases(
            config.path,
            channels=config.channels,
            labels=config.labels,
            subset=subset,
            dataset_name=config.dataset_name,
            skip_bad=config.skip_bad,
        )
    if not cases:
        return []
    return validate_cases(
        cases,
        skip_bad=config.skip_bad,
        check_values=check_values,
        require_labels=subset == "train",
    )
