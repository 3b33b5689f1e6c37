"""Run logs: one JSON object per line in ``metrics.jsonl``, mirrored to TensorBoard."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class RunLogger:
    """Append-only metrics log; a resumed run keeps appending to the same files."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

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


def read_log(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
