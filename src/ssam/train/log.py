"""Run logs: one JSON object per line in ``metrics.jsonl``, mirrored to TensorBoard."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ssam.atomic import write_text_atomic


class RunLogger:
    """Append-only metrics log. A resumed run (``resume_from`` = the saved (step, epoch)) first
    drops what it will log again: the steps after the saved one and the epochs from the saved
    one on, so that its log equals an uninterrupted run's (TensorBoard: ``purge_step``)."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        enabled: bool = True,
        resume_from: tuple[int, int] | None = None,
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled and resume_from is not None and self.path.exists():
            kept = [r for r in read_log(self.path) if not is_replayed(r, *resume_from)]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_from[0] + 1 if resume_from is not None else None
            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, kind: str, step: int, **values: float | int | str | None) -> None:
        if not self.enabled:
            return
        values = {
            k: None if isinstance(v, float) and math.isnan(v) else v for k, v in values.items()
        }
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, int | float) and value is not None:
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def is_replayed(record: dict, step: int, epoch: int) -> bool:
    """Whether a run resumed at optimiser ``step`` and (next) ``epoch`` logs ``record`` again."""
    if record["kind"] == "train":
        return record["step"] > step
    if record["kind"] == "epoch":
        return record["epoch"] >= epoch
    return False


def read_log(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
