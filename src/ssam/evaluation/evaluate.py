"""Score a trained adapter, or the untrained base model, on a dataset split (DESIGN.md 7).

Per case and label: Dice, IoU and HD95 (MONAI) at the original resolution, each label scored on
its own mask (probability >= 0.5): the model segments every label name independently, so a
lesion inside an organ counts as found even where the organ's probability is higher (the
label map of ``ssam predict`` gives such pixels to the more probable label). Volumes are
scored as volumes with HD95 in mm from the voxel spacing; 2D images in pixels. How empty
ground truths
count is ``ssam.evaluation.metrics.EMPTY_GT_POLICY``, written into ``summary.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ssam.config.train import TrainConfig
from ssam.data.cases import Case, read_case_image, read_case_labels
from ssam.data.io import NIFTI_SUFFIXES, file_suffix, read_header
from ssam.data.layouts import load_cases
from ssam.data.splits import RUN_SPLIT_FILE, split_dataset
from ssam.data.transforms import scale_intensity
from ssam.errors import ConfigError, DataError
from ssam.evaluation.metrics import compute_case_metrics
from ssam.evaluation.plots import (
    CaseView,
    keep_worst,
    make_case_view,
    plot_dice_per_case,
    render_worst_cases,
)
from ssam.evaluation.report import MetricsTable
from ssam.factory import create_model
from ssam.inference.backends import ONNX_BACKENDS, use_backend
from ssam.inference.predictor import SSAMPredictor

Split = Literal["train", "val", "test", "all"]
SPLITS: tuple[str, ...] = ("train", "val", "test", "all")
UNTRAINED = "untrained base model (fresh adapter: W' = W, text-affine at its seeded init)"


@dataclass
class EvaluationResult:
    table: MetricsTable
    output_dir: Path
    n_cases: int
    pictures: list[Path] = field(default_factory=list)  # dice_per_case.png, worst_cases.png
    worst_cases: list[str] = field(default_factory=list)  # the worst sheet's rows, worst first


def read_run_split(adapter: str | Path | None) -> dict | None:
    """The ``split.json`` training wrote beside ``adapter`` (per dataset: how it was split and
    the case ids of train and val), or None when there is none (or it is unreadable)."""
    if adapter is None:
        return None
    try:
        stored = json.loads((Path(adapter).parent / RUN_SPLIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None


def _as_trained(
    name: str, split: str, cases: list[Case], recomputed: list[Case], run: dict | None
) -> tuple[list[Case], str] | None:
    """The run's own ``split`` of dataset ``name`` from its ``split.json`` (None: not
    recorded). It wins over the split computed today, whose rules or defaults may differ from
    the run's: scoring a case the adapter was trained on as validation would inflate Dice."""
    ids = ((run or {}).get(name) or {}).get(split)
    if not isinstance(ids, list):
        return None
    by_id = {c.case_id: c for c in cases}
    chosen = [by_id[i] for i in ids if i in by_id]
    how = f"as the run split it ({RUN_SPLIT_FILE}): {len(chosen)} cases"
    missing = len(ids) - len(chosen)
    if missing:
        how += f"; {missing} of its cases are no longer in the dataset"
    if {c.case_id for c in recomputed} != {c.case_id for c in chosen}:
        how += "; today's split settings would choose other cases"
    return chosen, how


def describe_split_cases(
    config: TrainConfig, split: Split, run: dict | None = None
) -> tuple[dict[str, list[Case]], dict[str, str]]:
    """Per dataset: the cases of ``split``, split exactly as training split them (``all``:
    every labelled case, train, val and labelled test cases), and how it was split. ``run``:
    a run's ``split.json`` (``read_run_split``), whose train and val case ids win."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    selected, described = {}, {}
    for dataset in config.datasets:
        name = dataset.dataset_name
        cases = load_cases(dataset)
        test = load_cases(dataset, "test") if split in ("test", "all") else []
        if split == "all":
            selected[name] = cases + [c for c in test if c.label_path is not None]
            described[name] = f"all {len(selected[name])} labelled cases"
            continue
        parts = split_dataset(cases, dataset.split, dataset.path, test, name)
        selected[name], described[name] = list(getattr(parts, split)), parts.summary_line()
        stored = _as_trained(name, split, cases, selected[name], run)
        if stored is not None:
            selected[name], described[name] = stored
    if not any(selected.values()):
        hint = "; --split all scores every labelled case" if split != "all" else ""
        raise DataError(f"no dataset has cases in the {split!r} split{hint}")
    return selected, described


def select_split_cases(config: TrainConfig, split: Split) -> dict[str, list[Case]]:
    """The cases of ``split`` for every dataset (see ``describe_split_cases``)."""
    return describe_split_cases(config, split)[0]


def build_predictor(
    config: TrainConfig, adapter: str | Path | None, batch_size: int, backend: str = "torch"
) -> SSAMPredictor:
    """The adapter's predictor, its model run on ``backend`` (``ssam.inference.backends``);
    without one, the untrained model (fresh adapter: W' = W, the text-affine layer as training
    initialises it from ``config.seed``): a baseline, in torch (eager or compiled)."""
    if adapter is not None:
        predictor = SSAMPredictor.from_adapter(
            adapter,
            config.model.sam_checkpoint,
            config.model.clip_checkpoint,
            allow_download=config.model.allow_download,
            batch_size=batch_size,
        )
        use_backend(predictor, backend, adapter)
        return predictor
    if backend in ONNX_BACKENDS:
        raise ConfigError(f"--backend {backend} needs --adapter: the baseline runs in torch")
    torch.manual_seed(config.seed)  # as training does before building its model
    model = create_model(config.model)
    predictor = SSAMPredictor(model, (), batch_size=batch_size)
    use_backend(predictor, backend, None)
    return predictor


def score_case(
    predictor: SSAMPredictor,
    case: Case,
    slice_axis: int,
    notes: list[str] | None = None,
    views: list[CaseView] | None = None,
) -> dict[str, dict]:
    """Metrics per label of one case: predicted label map vs. the case's label map. The
    prediction's intensity warnings are appended to ``notes`` when given, and the case's
    picture for the worst-case sheet (one slice, panel-sized) to ``views``."""
    image, properties = read_case_image(case)
    target, _ = read_case_labels(case)
    names = list(case.labels)
    segmentation = predictor.segment_array(image, properties, names, axis=slice_axis)
    predicted = segmentation.masks  # (L, *spatial): each label's own mask, probability >= 0.5
    if notes is not None:
        notes.extend(segmentation.warnings)
    if properties.is_2d:
        target, spacing = target[..., 0], None  # 2D: HD95 in pixels
    else:
        spacing = tuple(float(s) for s in properties.spacing)
    if predicted.shape[1:] != target.shape:
        raise DataError(
            f"{case.label_path}: label map {target.shape} and prediction "
            f"{predicted.shape[1:]} differ"
        )
    scores = {
        name: compute_case_metrics(predicted[k], target == case.labels[name], spacing)
        for k, name in enumerate(names)
    }
    if views is not None:
        truth = np.zeros(target.shape, np.uint8)  # label values -> 1..L in ``names`` order
        for k, name in enumerate(names, 1):
            truth[target == case.labels[name]] = k
        volume = not properties.is_2d
        views.append(
            make_case_view(
                case.case_id,
                {name: float(m["dice"]) for name, m in scores.items()},
                names,
                image if volume else image[..., 0],
                truth,
                segmentation.label_map,
                axis=segmentation.slice_axis if volume else None,
                rotate=volume and file_suffix(case.label_path) in NIFTI_SUFFIXES,
                scale=lambda pixels: scale_intensity(
                    pixels, segmentation.intensity, segmentation.value_range
                ),
            )
        )
    return scores


def evaluate(
    config: TrainConfig,
    adapter: str | Path | None,
    split: Split = "val",
    output_dir: str | Path | None = None,
    batch_size: int = 8,
    on_case: Callable[[str], None] | None = None,
    pictures: bool = True,
    progress: bool = False,
    backend: str = "torch",
    say: Callable[[str], None] | None = None,
) -> EvaluationResult:
    """Evaluate ``adapter`` (None: the untrained base model) on ``split`` of the datasets in
    ``config``; writes ``metrics.csv`` and ``summary.json`` into ``output_dir`` (default:
    beside the adapter, or ``<output_dir of the config>/eval-untrained-<split>``), and with
    ``pictures`` ``dice_per_case.png`` and ``worst_cases.png`` (the lowest-Dice cases).
    ``on_case`` is called with each case id once it is scored; ``progress``: a bar over the
    cases on stderr; ``backend``: where the model runs (one of ``ssam.inference.backends.BACKENDS``); ``say``
    receives one line naming the base model and where its weights came from (also in the
    summary's ``base``)."""
    if output_dir is None:
        base = Path(adapter).parent if adapter is not None else Path(config.output_dir)
        output_dir = (
            base / f"eval-{split}" if adapter is not None else base / f"eval-untrained-{split}"
        )
    output_dir = Path(output_dir)
    cases, splits = describe_split_cases(config, split, read_run_split(adapter))
    predictor = build_predictor(config, adapter, batch_size, backend)
    base = predictor.model.weights_source
    if say is not None:
        say(base)
    model = str(adapter) if adapter is not None else UNTRAINED
    table = MetricsTable(
        hd95_unit=_hd95_unit([c for v in cases.values() for c in v]),
        context={"model": model, "base": base, "split": split, "splits": splits},
    )
    by_name = {d.dataset_name: d for d in config.datasets}
    several = sum(1 for v in cases.values() if v) > 1
    worst: list[CaseView] = []  # only the worst few are kept: memory stays flat
    total = sum(len(v) for v in cases.values())
    shown = None if progress else True  # None: on a terminal only (a log file gets no bars)
    bar = tqdm(total=total, desc="evaluating", unit="case", disable=shown, leave=False)
    for name, dataset_cases in cases.items():
        predictor.intensity = by_name[name].intensity
        for case in dataset_cases:
            notes: list[str] = []
            views: list[CaseView] | None = [] if pictures else None
            scores = score_case(predictor, case, by_name[name].slice_axis, notes, views)
            if views:
                view = replace(views[0], name=f"{name}/{case.case_id}") if several else views[0]
                worst = keep_worst(worst, view)
            for label, metrics in scores.items():
                table.add(case.case_id, label, metrics, dataset=name)
            if notes:  # keyed DATASET/CASE where datasets could share case ids
                key = f"{name}/{case.case_id}" if several else case.case_id
                table.context.setdefault("warnings", {})[key] = notes
            bar.update()
            if on_case is not None:
                on_case(case.case_id)
    bar.close()
    table.write(output_dir)
    result = EvaluationResult(table, output_dir, sum(len(v) for v in cases.values()))
    if pictures and worst:
        result.pictures = [
            plot_dice_per_case(table.rows, output_dir / "dice_per_case.png"),
            render_worst_cases(worst, output_dir / "worst_cases.png"),
        ]
        result.worst_cases = [v.name for v in worst]
    return result


def _hd95_unit(cases: list[Case]) -> str:
    volumes = {not read_header(c.label_path).is_2d for c in cases}
    if volumes == {True}:
        return "mm"
    return "px" if volumes == {False} else "mm for volumes, px for 2D images"


def mean_dice(table: MetricsTable) -> float:
    """Mean Dice over all (case, label) rows."""
    return float(np.mean([row.dice for row in table.rows]))
