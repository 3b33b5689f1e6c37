"""``ssam predict`` killed with SIGKILL in the middle of a case: every file it leaves opens,
and the next run finishes what was cut off, also when the kill hit an ``--overwrite`` run
over a finished folder (whose old case JSON must not mark half-new outputs done)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from predict_helpers import write_png

CASES = [f"img{k:02d}" for k in range(8)]


def ssam_predict(inputs: Path, out: Path, base: list[str], *extra: str) -> list[str]:
    options = ["--save-probabilities", "--save-masks", "--threads", "1", "--no-progress"]
    command = [sys.executable, "-m", "ssam", "predict", str(inputs), "-o", str(out)]
    return [*command, *base, *options, *extra]


def case_of(name: str) -> str:
    """``img03_overlay.png``, ``img03.labels.json`` -> ``img03``."""
    return name.split("_")[0].split(".")[0]


def visible(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if not p.name.startswith("."))


def kill_mid_case(command: list[str], out: Path, since: int) -> None:
    """Start ``command``; SIGKILL it the moment a file it wrote appears for a case it has not
    finished (the case's JSON missing or older than ``since``, ns): a write cut short."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
    )
    deadline = time.monotonic() + 300
    try:
        while True:
            assert process.poll() is None, "ssam predict finished before it could be killed"
            assert time.monotonic() < deadline, "ssam predict wrote nothing in time"
            for path in visible(out) if out.is_dir() else []:
                try:
                    if path.stat().st_mtime_ns < since:
                        continue
                    report = out / f"{case_of(path.name)}.json"
                    finished = report.is_file() and report.stat().st_mtime_ns >= since
                except FileNotFoundError:
                    continue  # renamed or removed while looked at
                if not finished:
                    os.kill(process.pid, signal.SIGKILL)
                    process.wait(30)
                    assert process.returncode == -signal.SIGKILL
                    return
            time.sleep(0.001)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def unreadable(out: Path) -> list[str]:
    """Every visible output opened and decoded; the names of those that fail."""
    bad = []
    for path in visible(out):
        try:
            if path.suffix == ".png":
                with Image.open(path) as image:
                    image.load()
            else:
                json.loads(path.read_text())
        except (OSError, ValueError, SyntaxError) as err:
            bad.append(f"{path.name}: {err}")
    return bad


def check_finished(out: Path) -> None:
    """Every case complete and readable, no temporaries left, and each case's JSON written
    after all its other files (it marks them done)."""
    assert not unreadable(out), unreadable(out)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    for case in CASES:
        files = [p for p in visible(out) if case_of(p.name) == case]
        assert len(files) == 8, [p.name for p in files]  # map, 2 probs, 2 masks, overlay, 2 JSON
        report = (out / f"{case}.json").stat().st_mtime_ns
        late = [p.name for p in files if p.stat().st_mtime_ns > report]
        assert not late, f"{case}.json marks the case done before {late} were written"


@pytest.mark.slow
def test_a_killed_predict_leaves_whole_files_and_is_finished_by_the_next(
    adapter, tiny_checkpoint, tmp_path
):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for case in CASES:  # large enough that writing the outputs takes most of a case's time
        write_png(inputs / f"{case}.png", rng.integers(0, 256, (900, 1100, 3), dtype=np.uint8))
    out = tmp_path / "out"
    base = ["--adapter", str(adapter), "--sam-checkpoint", str(tiny_checkpoint), "--offline"]

    kill_mid_case(ssam_predict(inputs, out, base), out, time.time_ns())
    assert not unreadable(out), unreadable(out)

    again = subprocess.run(ssam_predict(inputs, out, base), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    check_finished(out)

    time.sleep(0.05)  # the overwrite's files are newer than the finished folder's
    kill_mid_case(ssam_predict(inputs, out, base, "--overwrite"), out, time.time_ns())
    assert not unreadable(out), unreadable(out)
    again = subprocess.run(ssam_predict(inputs, out, base), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    check_finished(out)
