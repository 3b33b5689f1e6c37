"""The offline demo: phantoms -> small foundation SAM -> S-SAM by label name -> metrics,
predictions and pictures, in one run folder.

Stages (each timed and reported):
1. data: seeded CT-like phantoms written in the nnU-Net layout (or the user's dataset);
2. foundation: a small SAM of the real architecture pre-trained with box prompts on other
   structures (skipped when official weights are given or cached);
3. untrained: the S-SAM model before training, scored on the held-out cases;
4. S-SAM: ``ssam.train`` by label name, the paper's trainable set;
5. evaluation, predictions and pictures on the held-out cases.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ssam.config.data import AugmentConfig, DatasetConfig, IntensityConfig, SplitConfig
from ssam.config.model import ModelConfig
from ssam.config.train import OptimConfig, TrainConfig
from ssam.data.cases import read_case_image, read_case_labels
from ssam.demo.foundation import pretrain_foundation
from ssam.demo.phantoms import PRETRAIN_STRUCTURES, write_phantom_dataset
from ssam.demo.plots import plot_learning_curves, render_panels
from ssam.errors import ConfigError
from ssam.evaluation.evaluate import evaluate, select_split_cases
from ssam.inference.files import PredictOptions, predict_cases
from ssam.inference.inputs import InputCase
from ssam.inference.predictor import SSAMPredictor
from ssam.sam.checkpoint import save_state_dict
from ssam.sam.variants import get_sam_spec
from ssam.train import train
from ssam.train.log import read_log
from ssam.weights import get_cache_dir

MARKER = "demo.json"


@dataclass(frozen=True)
class DemoPlan:
    """Sizes and step counts of one demo flavour."""

    phantom_size: int
    image_size: int
    n_pretrain: int
    n_train: int
    n_test: int
    foundation_steps: int
    foundation_lr: float
    epochs: int
    batch_size: int
    lr: float


FULL = DemoPlan(128, 128, 80, 64, 32, 300, 2e-3, 48, 8, 1e-2)
QUICK = DemoPlan(64, 64, 12, 10, 4, 8, 2e-3, 2, 4, 3e-3)


@dataclass
class DemoOptions:
    output_dir: Path = Path("runs/demo")
    quick: bool = False
    seed: int = 0
    data: Path | None = None
    label: str | None = None
    sam_checkpoint: Path | None = None
    clip_checkpoint: Path | None = None
    variant: str = "vit_b"
    real_image_size: int = 256
    allow_download: bool = False
    epochs: int | None = None  # None: the plan's
    val_fraction: float = 0.2  # --data without its own split: the held-out share


@dataclass
class DemoResult:
    output_dir: Path
    weights: str
    labels: list[str]
    dice_untrained: dict[str, float]
    dice_trained: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    foundation_box_dice: float | None = None

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


def _official_files(options: DemoOptions) -> tuple[Path, Path] | None:
    """(SAM, CLIP) weight files when given or already cached, else None (tiny demo model)."""
    from ssam.text import get_text_spec

    sam_spec, clip_spec = get_sam_spec(options.variant), get_text_spec("clip_vit_b32")
    cache = get_cache_dir() / "weights"
    sam = options.sam_checkpoint or (
        cache / sam_spec.weights.filename if sam_spec.weights else None
    )
    clip = options.clip_checkpoint or cache / clip_spec.weights.filename
    given = options.sam_checkpoint is not None or options.clip_checkpoint is not None
    if sam is not None and sam.is_file() and clip.is_file():
        return sam, clip
    if given:
        raise ConfigError(
            "real weights need both files: pass --sam-checkpoint and --clip-checkpoint "
            f"(missing: {sam if not (sam and sam.is_file()) else clip})"
        )
    return None


def _dataset(options: DemoOptions, root: Path, plan: DemoPlan) -> DatasetConfig:
    if options.data is None:
        return DatasetConfig(
            path=root / "phantoms",
            layout="nnunet",
            intensity=IntensityConfig(preset="rgb"),
            augment=AugmentConfig(rotation_deg=10, brightness=0.1),
            split=SplitConfig(val_fraction=0.15, seed=options.seed),
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


def run_demo(options: DemoOptions, say: Callable[[str], None] = print) -> DemoResult:
    """Run the demo into ``options.output_dir``; ``say`` receives progress lines.

    The demo's small models run on one thread: their many small operations gain nothing from
    a second one, and lose badly when another process competes for the cores.
    """
    official = _official_files(options)
    threads = torch.get_num_threads()
    if official is None:
        torch.set_num_threads(1)
    try:
        return _run_demo(options, say, official)
    finally:
        torch.set_num_threads(threads)


@dataclass
class _Base:
    """The model to adapt: its config, a sentence saying what it is, and stage-1 results."""

    model: ModelConfig
    weights: str
    history: list[dict] = field(default_factory=list)
    box_dice: float | None = None


class _Clock:
    """Seconds per stage, measured between calls to ``lap``."""

    def __init__(self) -> None:
        self.start, self.seconds = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self.start, 1)
        self.start = now


def _build_foundation(out: Path, plan: DemoPlan, seed: int, say) -> _Base:
    """Stage 1: phantoms of other structures, box-prompt pre-training, an official-layout file."""
    say(f"stage 1: pre-training a small SAM with box prompts ({plan.foundation_steps} steps)")
    write_phantom_dataset(
        out / "data" / "pretrain", plan.n_pretrain, seed + 10_000, plan.phantom_size,
        structures=PRETRAIN_STRUCTURES,
    )  # fmt: skip
    pretrain = DatasetConfig(path=out / "data" / "pretrain", layout="nnunet", neg_ratio=0.0)
    found = pretrain_foundation(
        get_sam_spec("demo"), pretrain, plan.image_size, plan.foundation_steps,
        plan.batch_size, plan.foundation_lr, seed,
    )  # fmt: skip
    say(f"  box-prompt Dice on held-out phantoms: {found.box_dice:.3f}")
    sam_path = save_state_dict(found.state_dict, out / "foundation" / "sam_demo.pth")
    model = ModelConfig(
        variant="demo", image_size=plan.image_size, sam_checkpoint=sam_path,
        text_encoder="tiny", allow_download=False,
    )  # fmt: skip
    weights = (
        "a small SAM (real architecture, 'demo' variant) pre-trained here with box prompts "
        "on phantoms, and a randomly initialised CLIP text tower of toy width"
    )
    return _Base(model, weights, found.history, found.box_dice)


def _official_base(options: DemoOptions, official: tuple[Path, Path]) -> _Base:
    sam_path, clip_path = official
    model = ModelConfig(
        variant=options.variant, image_size=options.real_image_size,
        sam_checkpoint=sam_path, clip_checkpoint=clip_path, allow_download=False,
    )  # fmt: skip
    return _Base(
        model, f"official SAM {options.variant} ({sam_path}) and CLIP ViT-B/32 ({clip_path})"
    )


def _score_untrained(config: TrainConfig, split: str, out: Path) -> tuple[list[str], dict]:
    """The label names, and Dice per label of the model training starts from (same seed)."""
    labels = list(list(select_split_cases(config, split).values())[0][0].labels)
    return labels, _mean_dice(evaluate(config, None, split, out / "eval-untrained").table)


def _write_pictures(config, result, split: str, labels: list[str], base: _Base, out: Path):
    """Predictions on the held-out cases, image | truth | prediction panels, learning curves."""
    adapter = result.best_adapter or result.last_adapter
    model = config.model
    predictor = SSAMPredictor.from_adapter(adapter, model.sam_checkpoint, model.clip_checkpoint)
    held_out = list(select_split_cases(config, split).values())[0]
    inputs = [InputCase(c.case_id, c.image_paths[0]) for c in held_out]
    predict_cases(predictor, inputs, PredictOptions(out / "predictions"), show_progress=False)
    render_panels(_panel_cases(predictor, held_out, labels), labels, out / "overlays.png")
    records = read_log(result.run_dir / "metrics.jsonl")
    plot_learning_curves(
        base.history,
        [r for r in records if r["kind"] == "train"],
        [r for r in records if r["kind"] == "epoch"],
        out / "learning_curve.png",
    )


def _run_demo(
    options: DemoOptions, say: Callable[[str], None], official: tuple[Path, Path] | None
) -> DemoResult:
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
    clock.lap("data")
    if official is None:
        base = _build_foundation(out, plan, options.seed, say)
    else:
        base = _official_base(options, official)
    clock.lap("foundation")
    config = TrainConfig(
        model=base.model, datasets=[dataset], output_dir=out / "train", epochs=plan.epochs,
        batch_size=plan.batch_size, seed=options.seed, tensorboard=True,
        optim=OptimConfig(lr=plan.lr, step_size=max(1, plan.epochs * 3 // 4), gamma=0.2),
        threads=torch.get_num_threads(),  # the count run_demo chose
    )  # fmt: skip
    split = "test" if options.data is None else "val"
    say("stage 2a: scoring the untrained S-SAM model on the held-out cases")
    labels, untrained = _score_untrained(config, split, out)
    clock.lap("untrained")
    say(f"stage 2b: S-SAM training by label name ({plan.epochs} epochs, batch {plan.batch_size})")
    result = train(config)
    clock.lap("train")
    say("stage 3: evaluation, predictions and pictures on the held-out cases")
    adapter = result.best_adapter or result.last_adapter
    trained = _mean_dice(evaluate(config, adapter, split, out / "eval").table)
    _write_pictures(config, result, split, labels, base, out)
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
        output_dir=out, weights=base.weights, labels=labels, dice_untrained=untrained,
        dice_trained=trained, seconds={**clock.seconds, "total": round(sum(clock.seconds.values()), 1)},
        files={k: str(v) for k, v in files.items()}, foundation_box_dice=base.box_dice,
    )  # fmt: skip
    (out / MARKER).write_text(demo.to_json())
    return demo
