"""Progress bars on a terminal only: ``ssam train`` and ``ssam predict`` writing to a file or a
pipe (a log, CI) give one line per epoch and no bar refreshes; on a terminal the bars show."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import time

import nibabel as nib
import numpy as np
import pytest

from predict_helpers import write_png

TINY = [
    "model.variant=tiny",
    "model.image_size=64",
    "model.text_encoder=tiny",
    "model.allow_download=false",
    "tensorboard=false",
    "threads=1",
]


def ssam(*args) -> list[str]:
    return [sys.executable, "-m", "ssam", *map(str, args)]


@pytest.fixture()
def cases(tmp_path):
    """Three 2D images and a small volume (whose slices get a bar of their own)."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(3):
        write_png(folder / f"img{k}.png", rng.integers(0, 256, (60, 70, 3), dtype=np.uint8))
    volume = rng.normal(100, 20, (40, 36, 12)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / "vol.nii.gz")
    return folder


def test_training_into_a_log_file_writes_a_line_per_epoch(tiny_checkpoint, shared_data, tmp_path):
    log = tmp_path / "train.log"
    args = ["train", "--data", shared_data / "glas", "--label", "gland", "--epochs", "3"]
    args += ["--batch-size", "4", "-o", tmp_path / "run", "--sam-checkpoint", tiny_checkpoint]
    args += [a for o in TINY for a in ("--set", o)]
    with log.open("w") as handle:
        done = subprocess.run(ssam(*args), stdout=handle, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "%|" not in text and "\r" not in text, f"progress bars in the log: {text[-1500:]!r}"
    for epoch in (1, 2, 3):
        assert sum(line.startswith(f"epoch {epoch}/3: loss ") for line in text.splitlines()) == 1
    assert len(text.splitlines()) < 30, text


def test_predict_bars_show_on_a_terminal_only(adapter, tiny_checkpoint, cases, tmp_path):
    base = ["--adapter", adapter, "--sam-checkpoint", tiny_checkpoint, "--threads", "1"]
    piped = subprocess.run(
        ssam("predict", cases, "-o", tmp_path / "piped", *base),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert piped.returncode == 0, piped.stderr[-3000:]
    output = piped.stderr + piped.stdout
    assert "%|" not in output and "\r" not in output, output[-1500:]
    assert "4 done" in " ".join(piped.stdout.split())

    leader, follower = pty.openpty()  # a terminal of 40 x 120, as a user's shell gives
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    command = ssam("predict", cases, "-o", tmp_path / "shown", *base)
    process = subprocess.Popen(command, stdout=follower, stderr=follower, env=os.environ.copy())
    os.close(follower)
    shown = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other end closed (the process ended)
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert process.wait(60) == 0, shown[-3000:]
    assert b"\r" in shown and b"cases:" in shown, shown[-1500:]
