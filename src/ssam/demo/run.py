"""The offline demo: phantoms -> S-SAM on LiteMedSAM by label name -> metrics, predictions
and pictures, in one run folder.

Stages (each timed and reported):
1. data: seeded CT-like phantoms written in the nnU-Net layout (or the user's dataset);
2. untrained: the S-SAM model before training (LiteMedSAM, W' = W, a fresh label token),
   scored on the held-out cases;
3. box reference: LiteMedSAM prompted with each ground-truth box (``score_box_reference``),
   the expert-prompt reference that label names are measured against;
4. S-SAM: ``ssam.train`` by label name, the paper's trainable set;
5. evaluation, predictions and pictures on the held-out cases.

The base is LiteMedSAM from its installed package (offline), or another base given with its
checkpoint; without CLIP weights the text encoder is CLIP's architecture with seeded random
weights (each label name still gets its own token), and the demo says so.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ssam.config.data import AugmentConfig, DatasetConfig, IntensityConfig, SplitConfig
from ssam.config.model import ModelConfig
from ssam.config.train import OptimConfig, TrainConfig
from ssam.data.cases import read_case_image, read_case_labels
from ssam.demo.phantoms import write_phantom_dataset
from ssam.demo.plots import plot_learning_curves, render_panels
from ssam.errors import ConfigError
from ssam.evaluation.box_reference import score_box_reference
from ssam.evaluation.evaluate import evaluate, select_split_cases
from ssam.factory import create_model
from ssam.inference.files import PredictOptions, predict_cases
from ssam.inference.inputs import InputCase
from ssam.inference.predictor import SSAMPredictor
from ssam.sam.variants import DEFAULT_VARIANT
from ssam.train import train
from ssam.train.log import read_log

MARKER = "demo.json"


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and step counts of one demo flavour."""

    phantom_size: int
    image_size: int
    n_train: int
    n_test: int
    epochs: int
    batch_size: int
    lr: float


FULL = DemoPlan(128, 64, 64, 32, 5, 8, 3e-3)
QUICK = DemoPlan(64, 64, 8, 4, 1, 4, 3e-3)


@dataclass
class DemoOptions:
    output_dir: Path = Path("runs/demo")
    quick: bool = False
    seed: int = 0
    data: Path | None = None
    label: str | None = None
    variant: str = DEFAULT_VARIANT
    sam_checkpoint: Path | None = None  # None: the variant's own file (LiteMedSAM: packaged)
    clip_checkpoint: Path | None = None  # None: cached CLIP, else a random text tower
    image_size: int | None = None  # None: the plan's
    epochs: int | None = None  # None: the plan's
    val_fraction: float = 0.2  # --data without its own split: the held-out share
    threads: int | str = "auto"


@dataclass
class DemoResult:
    output_dir: Path
    weights: str
    labels: list[str]
    dice_untrained: dict[str, float]
    dice_trained: dict[str, float]
    dice_box: dict[str, float]  # the box-prompted base, on held-out cases with the label
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    plan: dict[str, object] = field(default_factory=dict)
    peak_rss_mib: float = 0.0  # this process's peak resident memory

    def to_json(self) -> str:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items()}
        return json.dumps(data, indent=2)


def _prepare_output(path: Path) -> Path:
    """A fresh run folder; an older demo run there is replaced, anything else is kept."""
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).is_file():
            raise ConfigError(f"{path} exists and is not a demo run folder; choose another")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / MARKER).write_text("{}")
    return path


def _dataset(options: DemoOptions, root: Path, plan: DemoPlan) -> DatasetConfig:
    if options.data is None:
        return DatasetConfig(
            path=root / "phantoms",
            layout="nnunet",
            intensity=IntensityConfig(preset="rgb"),
            augment=AugmentConfig(rotation_deg=10, brightness=0.1),
            # every phantom is drawn on its own: each its own group, by construction
            split=SplitConfig(val_fraction=0.15, seed=options.seed, group_pattern="none"),
            neg_ratio=0.5,
        )
    layout = "nnunet" if (options.data / "dataset.json").is_file() else "folder"
    if layout == "folder" and not options.label:
        raise ConfigError(f"{options.data}: a folder dataset needs --label NAME")
    return DatasetConfig(
        path=options.data,
        layout=layout,
        label=options.label if layout == "folder" else None,
        labels=[options.label] if layout == "nnunet" and options.label else None,
        split=SplitConfig(val_fraction=options.val_fraction, seed=options.seed),
    )


def _mean_dice(table) -> dict[str, float]:
    summary = table.summary()["labels"]
    return {label: s["dice"]["mean"] for label, s in summary.items()}


def _panel_cases(predictor: SSAMPredictor, cases, labels: list[str], count: int = 4):
    """(case id, image 0-255, truth map, predicted map) for the first ``count`` 2D cases."""
    rows = []
    for case in cases[:count]:
        image, properties = read_case_image(case)
        if not properties.is_2d:
            continue
        target, _ = read_case_labels(case)
        truth = np.zeros(target.shape[:2], np.uint8)
        for k, name in enumerate(labels, start=1):
            truth[target[..., 0] == case.labels[name]] = k
        predicted = predictor.segment_array(image, properties, labels).label_map
        shown = np.clip(image[..., 0].astype(np.float32), 0, 255)
        rows.append((case.case_id, shown, truth, predicted))
    return rows


class _Clock:
    """Seconds per stage, measured between calls to ``lap``."""

    def __init__(self) -> None:
        self.start, self.seconds = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.start, 1)
        self.start = now


def _model_config(options: DemoOptions, plan: DemoPlan) -> ModelConfig:
    return ModelConfig(
        variant=options.variant,
        image_size=options.image_size or plan.image_size,
        sam_checkpoint=options.sam_checkpoint,
        clip_checkpoint=options.clip_checkpoint,
        allow_download=False,
    )


def _score_untrained(
    config: TrainConfig, split: str, out: Path, say: Callable[[str], None]
) -> tuple[list[str], dict]:
    """The label names, and Dice per label of the model training starts from (same seed);
    ``say`` gets the line naming the base and where its weights came from."""
    labels = list(list(select_split_cases(config, split).values())[0][0].labels)
    table = evaluate(config, None, split, out / "eval-untrained", say=say).table
    return labels, _mean_dice(table)


def _score_boxes(config: TrainConfig, split: str, labels: list[str]) -> dict[str, float]:
    """Mean Dice per label of the base prompted with the ground-truth boxes (held-out cases);
    NaN where no held-out 2D case contains the label."""
    predictor = SSAMPredictor(create_model(config.model))
    predictor.intensity = config.datasets[0].intensity
    held_out = list(select_split_cases(config, split).values())[0]
    scores = score_box_reference(predictor, held_out, labels)
    return {name: float(np.mean(v)) if v else float("nan") for name, v in scores.items()}


def _write_pictures(config, result, split: str, labels: list[str], out: Path) -> str:
    """Predictions on the held-out cases, image | truth | prediction panels, learning curves.
    Returns the trained model's ``weights_source`` line."""
    adapter = result.best_adapter or result.last_adapter
    model = config.model
    predictor = SSAMPredictor.from_adapter(adapter, model.sam_checkpoint, model.clip_checkpoint)
    held_out = list(select_split_cases(config, split).values())[0]
    inputs = [InputCase(c.case_id, c.image_paths[0]) for c in held_out]
    predict_cases(predictor, inputs, PredictOptions(out / "predictions"), show_progress=False)
    render_panels(_panel_cases(predictor, held_out, labels), labels, out / "overlays.png")
    records = read_log(result.run_dir / "metrics.jsonl")
    plot_learning_curves(
        [r for r in records if r["kind"] == "train"],
        [r for r in records if r["kind"] == "epoch"],
        out / "learning_curve.png",
    )
    return predictor.model.weights_source


def run_demo(options: DemoOptions, say: Callable[[str], None] = print) -> DemoResult:
    """Run the demo into ``options.output_dir``; ``say`` receives progress lines."""
    plan = QUICK if options.quick else FULL
    if options.epochs is not None:
        plan = dataclasses.replace(plan, epochs=options.epochs)
    out = _prepare_output(Path(options.output_dir))
    clock = _Clock()
    if options.data is None:
        say(f"writing {plan.n_train + plan.n_test} phantoms (nnU-Net layout) to {out / 'data'}")
        write_phantom_dataset(
            out / "data" / "phantoms", plan.n_train, options.seed, plan.phantom_size,
            n_test=plan.n_test,
        )  # fmt: skip
    dataset = _dataset(options, out / "data", plan)
    model = _model_config(options, plan)
    config = TrainConfig(
        model=model, datasets=[dataset], output_dir=out / "train", epochs=plan.epochs,
        batch_size=plan.batch_size, seed=options.seed, tensorboard=True,
        optim=OptimConfig(lr=plan.lr, step_size=max(1, plan.epochs * 3 // 4), gamma=0.2),
        threads=options.threads,
    )  # fmt: skip
    clock.lap("data")
    split = "test" if options.data is None else "val"
    say("stage 1: scoring the untrained S-SAM model (LiteMedSAM + a fresh label token)")
    labels, untrained = _score_untrained(config, split, out, lambda line: say(f"  {line}"))
    clock.lap("untrained")
    say("stage 2: the expert-prompt reference: the base prompted with ground-truth boxes")
    boxes = _score_boxes(config, split, labels)
    clock.lap("box reference")
    say(
        f"stage 3: S-SAM training by label name ({plan.epochs} epochs, batch "
        f"{plan.batch_size}, input {model.image_size} px)"
    )
    result = train(config)
    clock.lap("train")
    say("stage 4: evaluation, predictions and pictures on the held-out cases")
    adapter = result.best_adapter or result.last_adapter
    trained = _mean_dice(evaluate(config, adapter, split, out / "eval").table)
    weights = _write_pictures(config, result, split, labels, out)
    clock.lap("evaluate")
    files = {
        "metrics": out / "eval" / "metrics.csv",
        "summary": out / "eval" / "summary.json",
        "learning_curve": out / "learning_curve.png",
        "overlays": out / "overlays.png",
        "predictions": out / "predictions",
        "adapter": adapter,
        "run": result.run_dir,
    }
    demo = DemoResult(
        output_dir=out, weights=weights, labels=labels, dice_untrained=untrained,
        dice_trained=trained, dice_box=boxes,
        seconds={**clock.seconds, "total": round(sum(clock.seconds.values()), 1)},
        files={k: str(v) for k, v in files.items()},
        plan={**dataclasses.asdict(plan), "image_size": model.image_size},
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )  # fmt: skip
    (out / MARKER).write_text(demo.to_json())
    return demo
