"""The training loop (DESIGN.md 6), on one CPU or GPU or many through ``accelerate``.

Determinism: data order and augmentation depend only on (seed, epoch, index), CLIP features are
computed once per label, and the resumable state is saved after whole optimiser steps, so a run
killed at any point and resumed with ``resume=True`` ends with the same adapter (bit-exact on
the CPU) as an uninterrupted run of the same seed.

Run folder: ``config.yaml`` (resolved, headed by the split used), ``split.json`` (the cases of
each side), ``metrics.jsonl`` and ``tensorboard/``, ``last.safetensors`` and ``best.safetensors``
(adapters), ``state.pt`` (resumable state). The first ``epoch`` record (epoch -1, step 0) is the
validation of the untrained model, so that every learning curve starts at the baseline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from ssam.config.train import TrainConfig, dump_train_config
from ssam.data.splits import RUN_SPLIT_FILE
from ssam.errors import ConfigError
from ssam.evaluation.report import write_text_atomic
from ssam.factory import create_model
from ssam.sam.families import get_family
from ssam.threads import apply_threads, launched_locally
from ssam.train.batches import (
    chunk_rows,
    compute_epoch_order,
    group_for_accumulation,
    plan_micro_batch,
    split_batches,
)
from ssam.train.data import TrainingData, build_training_data
from ssam.train.embeddings import EmbeddedSamples, encoder_digest, stored_embeddings
from ssam.train.log import RunLogger, read_log
from ssam.train.losses import segmentation_loss
from ssam.train.plots import plot_run_curves
from ssam.train.state import STATE_FILE, Progress, load_training_state, save_training_state
from ssam.train.validate import (
    compute_batch_dice,
    forward_batch,
    score_samples,
    summarise_scores,
)
from ssam.tuning.adapter import adapter_state_dict, save_adapter
from ssam.tuning.svd import compute_svd_regulariser

log = logging.getLogger(__name__)
CHECKPOINTED_STAGES = 2  # TinyViT's stages at S and S/2

# Settings a resumed run may change; any other difference would make it another run.
_RESUMABLE_CHANGES = {
    "epochs",
    "max_steps",
    "progress",
    "num_workers",
    "tensorboard",
    "val_at_start",
    "threads",
    "micro_batch_size",
    "embeddings_dir",
}


@dataclass
class TrainResult:
    run_dir: Path
    progress: Progress
    last_adapter: Path
    best_adapter: Path | None
    labels: list[str]


def _check_resume_config(saved: dict, current: dict, path: Path, cached: bool) -> None:
    """Refuse a resume whose settings differ from the saved run's, except the resumable
    ones. A run saved before ``cache_embeddings`` existed encoded every step: it resumes as
    long as this config does too (``cached``: whether it would train on stored embeddings)."""
    if "cache_embeddings" not in saved and not cached:
        saved = {**saved, "cache_embeddings": current.get("cache_embeddings")}
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    changed = [k for k in changed if k not in _RESUMABLE_CHANGES]
    if changed:
        raise ConfigError(
            f"{path}: cannot resume: settings differ from the saved run: {changed} "
            f"(only {', '.join(sorted(_RESUMABLE_CHANGES))} may change)"
        )


def _check_run_dir(config: TrainConfig, resume: bool) -> tuple[Path, bool]:
    """(run folder, whether there is a saved state to resume). Creates nothing: the folder is
    made when the run's first file is written, so a run that fails early leaves none."""
    run_dir = Path(config.output_dir)
    state = run_dir / STATE_FILE
    if state.exists() and not resume:
        raise ConfigError(
            f"{run_dir} already holds a training run; pass --resume to continue it, "
            "or choose another output directory"
        )
    if resume and not state.exists():
        print(
            f"{state}: nothing saved yet (the run stopped before its first save): "
            "starting it from scratch",
            file=sys.stderr,
        )
        return run_dir, False
    return run_dir, resume


def _clear_leftovers(run_dir: Path, fresh: bool) -> None:
    """Remove temporary files of interrupted atomic writes (``.NAME.*.tmp``) and, for a fresh
    start in a folder whose run never saved a state, that run's logs."""
    if not run_dir.is_dir():
        return
    for leftover in run_dir.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)
    if fresh:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)


def _load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    with torch.no_grad():
        for key, value in tensors.items():
            named[key].copy_(value)


class _Run:
    """One training run's live objects; methods are the loop's steps."""

    def __init__(self, config: TrainConfig, resume: bool) -> None:
        self.config = config
        self.run_dir, resume = _check_run_dir(config, resume)
        self.resumed = resume
        self.accelerator = Accelerator(
            cpu=config.device == "cpu", mixed_precision=config.mixed_precision
        )
        self.main = self.accelerator.is_main_process
        if self.main:
            _clear_leftovers(self.run_dir, fresh=not resume)
        torch.manual_seed(config.seed)
        self.data: TrainingData = build_training_data(config)
        model = create_model(config.model, device="cpu")
        if self.main:
            print(model.weights_source, file=sys.stderr)
        if config.activation_checkpointing:
            model.image_encoder.checkpoint_stages(CHECKPOINTED_STAGES)
        model.text_encoder.encode(self.data.vocabulary)  # CLIP runs here, never in a step
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            params, lr=config.optim.lr, weight_decay=config.optim.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=config.optim.step_size, gamma=config.optim.gamma
        )
        self.micro_batch, micro_line = choose_micro_batch(config, self.accelerator.device)
        if self.main and micro_line:
            print(micro_line, file=sys.stderr)
        advice = cpu_size_advice(config, self.accelerator.device)
        if self.main and advice:
            print(advice, file=sys.stderr)
        self.progress = Progress()
        self.announce_splits()
        if resume:
            self._restore(model)
        elif self.main:
            write_text_atomic(
                self.run_dir / "config.yaml", self.split_header + dump_train_config(config)
            )
            split_json = json.dumps(self.split_cases, indent=1)
            write_text_atomic(self.run_dir / RUN_SPLIT_FILE, split_json)
        if config.embeddings_cached:  # after the resume check: a refused resume encodes nothing
            self.use_stored_embeddings(model)
        self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        self.logger = RunLogger(
            self.run_dir,
            config.tensorboard,
            enabled=self.main,
            resume_from=(self.progress.step, self.progress.epoch) if resume else None,
        )
        if not resume:
            for name, split in self.data.splits.items():
                self.logger.log("split", 0, dataset=name, **split.describe())

    def use_stored_embeddings(self, model: torch.nn.Module) -> None:
        """Train and validate on embeddings computed once per image (``ssam.train.embeddings``:
        the method leaves the encoder frozen). The first process on each machine computes those
        not stored; the others wait, then check that what is stored fits them."""
        c = self.config
        folder = Path(c.embeddings_dir or self.run_dir / "embeddings")
        model.to(self.accelerator.device)
        store = partial(
            stored_embeddings,
            model,
            folder=folder,
            encoder=encoder_digest(model.image_encoder),
            batch_size=min(c.batch_size, 8),
        )
        sides = {"train": self.data.train, "val": self.data.val}
        named = [
            (f"{samples.cases[0].dataset}-{role}", role, k, samples)
            for role, datasets in sides.items()
            for k, samples in enumerate(datasets)
        ]
        counts = {"computed": 0, "reused": 0}

        def load(compute: bool) -> None:
            for name, role, k, samples in named:
                embeddings, rows, fresh = store(samples, name=name, compute=compute)
                counts["computed" if fresh else "reused"] += len(embeddings)
                sides[role][k] = EmbeddedSamples(samples, embeddings, rows)

        first = self.accelerator.is_local_main_process
        if first:
            load(compute=True)
        self.accelerator.wait_for_everyone()
        if not first:
            load(compute=False)
        if self.main:
            print(
                f"method {c.model.method} leaves the image encoder frozen: training on stored "
                f"embeddings ({counts['computed']} images encoded now, {counts['reused']} "
                f"reused, in {folder}); training images are not augmented "
                "(cache_embeddings=false encodes every step, with augmentation)",
                file=sys.stderr,
            )

    def announce_splits(self) -> None:
        """Print the split of every dataset (main process), before any work starts."""
        if self.main:
            for name, split in self.data.splits.items():
                print(f"split of {name}: {split.summary_line()}", file=sys.stderr)

    @property
    def split_header(self) -> str:
        """``config.yaml``'s first lines: the split each dataset got, as YAML comments."""
        lines = [f"# split of {n}: {s.summary_line()}" for n, s in self.data.splits.items()]
        return "\n".join(lines) + "\n"

    @property
    def split_cases(self) -> dict:
        """Per dataset: how it was split, and the case ids of each side."""
        return {
            name: {
                **split.describe(),
                **{role: [c.case_id for c in getattr(split, role)] for role in ("train", "val")},
            }
            for name, split in self.data.splits.items()
        }

    def _restore(self, model: torch.nn.Module) -> None:
        state = load_training_state(self.run_dir / STATE_FILE)
        current = self.config.model_dump(mode="json")
        path, cached = self.run_dir / STATE_FILE, self.config.embeddings_cached
        _check_resume_config(state["config"], current, path, cached)
        _load_trainable(model, state["tensors"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = state["progress"]
        torch.set_rng_state(state["torch_rng"])

    @property
    def adapter_extra(self) -> dict:
        """What prediction needs besides the base: the training images' value statistics (the
        predictor warns about inputs unlike them), and the intensity mapping when all datasets
        share one (otherwise the predictor picks one per input by its dtype)."""
        extra = {"input_stats": self.data.input_stats}
        mappings = {d.intensity.model_dump_json() for d in self.config.datasets}
        if len(mappings) == 1:
            extra["intensity"] = self.config.datasets[0].intensity.model_dump(mode="json")
        return extra

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def save_state(self) -> None:
        if not self.main:
            return
        save_training_state(
            self.run_dir / STATE_FILE,
            adapter_state_dict(self.unwrapped),
            self.optimizer.state_dict(),
            self.scheduler.state_dict(),
            self.progress,
            self.config.model_dump(mode="json"),
        )

    def save_adapter(self, name: str) -> Path:
        path = self.run_dir / name
        if self.main:
            save_adapter(self.unwrapped, path, labels=self.data.vocabulary, **self.adapter_extra)
        return path

    def epoch_groups(self, epoch: int) -> list[list[list[int]]]:
        c = self.config
        order = compute_epoch_order(
            [len(d) for d in self.data.train], self.data.weights, c.seed, epoch, c.samples_per_epoch
        )
        batches = split_batches(
            order, c.batch_size, self.accelerator.process_index, self.accelerator.num_processes
        )
        return group_for_accumulation(batches, c.grad_accumulation)

    def loss(self, batch: dict, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Segmentation loss and Dice of ``rows`` of ``batch`` (label tokens from all of it)."""
        device, c = self.accelerator.device, self.config.loss
        with self.accelerator.autocast():
            logits = forward_batch(self.model, batch, device, rows)
        target = batch["mask"][rows].to(device)
        loss = segmentation_loss(
            logits.float(),
            target,
            c.focal_alpha,
            c.focal_gamma,
            c.dice_smooth,
            c.focal_weight,
            c.dice_weight,
        )
        return loss, compute_batch_dice(logits.float(), target)

    def backward_batch(self, batch: dict, share: float, sync: bool) -> tuple[float, torch.Tensor]:
        """Forward and backward one batch in chunks of ``micro_batch`` images, each chunk's
        loss weighted by its share of the batch: the gradients of one pass over the whole
        batch (both loss terms are means over samples; the label tokens and their BatchNorm
        statistics come from the whole batch, whose running statistics update once).
        ``share``: the batch's weight in the step; ``sync``: the step's last backward (DDP
        reduces the gradients then). Returns the batch's loss and per-sample Dice."""
        size = len(batch["label"])
        parts = chunk_rows(size, self.micro_batch)
        affine = self.unwrapped.text_affine
        total, dices = 0.0, []
        for j, rows in enumerate(parts):
            last = sync and j == len(parts) - 1
            context = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
            affine.hold_running_stats = j > 0
            try:
                with context:
                    loss, dice = self.loss(batch, rows)
                    loss = loss * ((rows.stop - rows.start) / size)
                    if j == 0 and self.config.loss.svd_regulariser > 0:
                        reg = compute_svd_regulariser(self.unwrapped)
                        loss = loss + self.config.loss.svd_regulariser * reg
                    self.accelerator.backward(loss * share)
            finally:
                affine.hold_running_stats = False
            total += loss.item()
            dices.append(dice)
        return total, torch.cat(dices)

    def optimiser_step(self, batches: list[dict]) -> tuple[float, float]:
        """Forward and backward every micro-batch of one step, then the optimiser step.
        Returns the step's mean loss and mean training Dice over all processes."""
        total_loss, dices = 0.0, []
        for i, batch in enumerate(batches):
            sync = i == len(batches) - 1
            loss, dice = self.backward_batch(batch, 1 / len(batches), sync)
            total_loss += loss / len(batches)
            dices.append(dice)
        if self.config.optim.grad_clip:
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        dice = torch.cat(dices).mean().item()
        if self.accelerator.num_processes == 1:
            return total_loss, dice
        stats = torch.tensor([total_loss, dice], device=self.accelerator.device)
        total_loss, dice = self.accelerator.reduce(stats, "mean").tolist()
        return total_loss, dice

    def steps_left(self) -> int | None:
        if self.config.max_steps is None:
            return None
        return self.config.max_steps - self.progress.step

    def run_epoch(self, epoch: int) -> float:
        """Train one epoch from where the progress says; returns the mean step loss."""
        groups = self.epoch_groups(epoch)
        todo = groups[self.progress.steps_in_epoch :]
        if self.steps_left() is not None:
            todo = todo[: max(self.steps_left(), 0)]
        for dataset in self.data.train:
            dataset.set_epoch(epoch)
        loader = DataLoader(
            self.data.train_set,
            batch_sampler=[batch for group in todo for batch in group],
            num_workers=self.config.num_workers,
            collate_fn=default_collate,
        )
        batches = iter(loader)
        bar = tqdm(
            todo,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            disable=None if self.config.progress and self.main else True,  # None: terminals only
            leave=False,
        )
        for group in bar:
            loss, dice = self.optimiser_step([next(batches) for _ in group])
            self.progress.epoch_loss_sum += loss
            self.progress.step += 1
            self.progress.steps_in_epoch += 1
            bar.set_postfix(loss=f"{loss:.4f}", dice=f"{dice:.3f}")
            lr = self.optimizer.param_groups[0]["lr"]
            self.logger.log("train", self.progress.step, epoch=epoch, loss=loss, dice=dice, lr=lr)
            if self.progress.step % self.config.checkpoint_every == 0:
                self.save_state()
        done = self.progress.steps_in_epoch
        return self.progress.epoch_loss_sum / done if done else math.nan

    def validate(self) -> dict:
        """Validation scores; each process scores its share of the samples, all get the total."""
        acc = self.accelerator
        scores, positive = score_samples(
            self.unwrapped,  # no DDP hooks: the processes' shards may differ in batch count
            self.data.val_set,
            self.micro_batch,
            acc.device,
            acc.autocast,
            shard=(acc.process_index, acc.num_processes),
            progress=self.config.progress and self.main,
        )
        if acc.num_processes > 1:
            scores, positive = gather_object(scores), gather_object(positive)
        return summarise_scores(scores, positive)

    def validate_baseline(self) -> None:
        """Validate the untrained model and log it as epoch -1 at step 0 (a fresh run only)."""
        if self.data.val_set is None or not self.config.val_at_start:
            return
        scores = self.validate()
        self.logger.log(
            "epoch", 0, epoch=-1, train_loss=None, **{f"val_{k}": v for k, v in scores.items()}
        )
        if self.main:
            print(f"validation before training: Dice {scores['dice']:.4f}", file=sys.stderr)

    def finish_epoch(self, epoch: int, mean_loss: float, complete: bool) -> None:
        """Validate when due, keep the best adapter, save the last adapter and the state."""
        if complete:
            self.scheduler.step()
            self.progress.epoch = epoch + 1
            self.progress.steps_in_epoch = 0
            self.progress.epoch_loss_sum = 0.0
        due = complete and (
            (epoch + 1) % self.config.val_every == 0 or epoch + 1 == self.config.epochs
        )
        record = {"epoch": epoch, "train_loss": mean_loss}
        if due and self.data.val_set is not None:
            scores = self.validate()
            record.update({f"val_{k}": v for k, v in scores.items()})
            best = self.progress.best_score
            if best is None or scores["dice"] > best:
                self.progress.best_score, self.progress.best_epoch = scores["dice"], epoch
                self.save_adapter("best.safetensors")
        self.logger.log("epoch", self.progress.step, **record)
        self.save_adapter("last.safetensors")
        self.save_state()
        if self.main and complete:
            print(self.epoch_line(epoch, record), file=sys.stderr)

    def epoch_line(self, epoch: int, record: dict) -> str:
        """``epoch 3/20: loss 0.4120, val Dice 0.7310 (best 0.7310, epoch 3)``."""
        line = f"epoch {epoch + 1}/{self.config.epochs}: loss {record['train_loss']:.4f}"
        if "val_dice" in record:
            best, when = self.progress.best_score, self.progress.best_epoch
            line += f", val Dice {record['val_dice']:.4f} (best {best:.4f}, epoch {when + 1})"
        return line


def choose_micro_batch(config: TrainConfig, device: torch.device) -> tuple[int, str]:
    """Images per forward/backward pass, and a line saying so when a batch is split.

    ``auto``: the most whose activations fit a budget of a quarter of this machine's memory
    (half a GPU's), shared by the processes of one launch on it; the encoder family's
    measured ``train_bytes_per_pixel`` sizes an image. On a CPU, no more than the family's
    ``cpu_pass_pixels`` either (TinyViT: larger passes take longer per image).
    """
    batch = config.batch_size
    if config.micro_batch_size != "auto":
        chosen, why = min(batch, config.micro_batch_size), "as set"
    elif config.embeddings_cached:  # no encoder activations: a batch fits in one pass
        return batch, ""
    else:
        if device.type == "cuda":
            memory, share = torch.cuda.get_device_properties(device).total_memory, 0.5
        else:
            memory, share = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), 0.25
        processes = 1 if device.type == "cuda" else launched_locally()
        budget = memory * share / processes
        family = get_family(config.model.variant)
        per_pixel = family.train_bytes_per_pixel
        if config.activation_checkpointing:
            per_pixel = family.checkpointed_bytes_per_pixel
        size = config.model.image_size
        chosen = plan_micro_batch(batch, size, per_pixel, budget)
        why = f"auto: ~{per_pixel * size**2 / 2**30:.2f} GiB of activations per image, budget "
        why += f"{budget / 2**30:.1f} GiB"
        fastest = family.cpu_pass_pixels if device.type == "cpu" else None
        if fastest and chosen > (cap := max(1, fastest // size**2)):
            chosen = cap
            why += f"; on a CPU at most {fastest} pixels a pass, the fastest"
    if chosen >= batch:
        return batch, ""
    images = "1 image" if chosen == 1 else f"{chosen} images"
    line = f"batch {batch} in passes of {images}, gradients as one batch ({why})"
    return chosen, line


def cpu_size_advice(config: TrainConfig, device: torch.device) -> str:
    """A line when a CPU trains the encoder above its family's ``cpu_image_size``, else ""."""
    size, best = config.model.image_size, get_family(config.model.variant).cpu_image_size
    if device.type != "cpu" or best is None or size <= best or config.embeddings_cached:
        return ""
    return (
        f"training at {size} px on a CPU: {best} px is this base's CPU size, a fraction of the "
        f"time per image for no lower Dice in bench/input_size.py (README: 'LiteMedSAM on a "
        f"CPU'); --set model.image_size={best} to use it"
    )


def train(config: TrainConfig, resume: bool = False) -> TrainResult:
    """Train an adapter as ``config`` says (continuing a saved run when ``resume``)."""
    before = torch.get_num_threads()
    _, line = apply_threads(config.threads)
    print(line, file=sys.stderr)
    try:
        return _train(config, resume)
    finally:
        torch.set_num_threads(before)


def _train(config: TrainConfig, resume: bool) -> TrainResult:
    run = _Run(config, resume)
    try:
        if not run.resumed:
            run.validate_baseline()
        epochs = range(run.progress.epoch, config.epochs)
        shown = None if config.progress and run.main else True  # None: on a terminal only
        for epoch in tqdm(epochs, desc="training", disable=shown):
            if run.steps_left() is not None and run.steps_left() <= 0:
                break
            mean_loss = run.run_epoch(epoch)
            complete = run.progress.steps_in_epoch == len(run.epoch_groups(epoch))
            run.finish_epoch(epoch, mean_loss, complete)
            if not complete:
                break
        run.accelerator.wait_for_everyone()
    finally:
        run.logger.close()
    if run.main and (run.run_dir / "metrics.jsonl").is_file():
        plot_run_curves(read_log(run.run_dir / "metrics.jsonl"), run.run_dir / "learning_curve.png")
    best = run.run_dir / "best.safetensors"
    return TrainResult(
        run.run_dir,
        run.progress,
        run.run_dir / "last.safetensors",
        best if best.exists() else None,
        run.data.vocabulary,
    )
