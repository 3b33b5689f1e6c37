"""Thread count: a given number as is; ``auto`` = the CPUs this process may use less the busy."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from ssam.threads import apply_threads, available_cpus, choose_threads, measure_busy_cpus


def test_a_given_count_is_used_as_is():
    assert choose_threads(3) == 3 and choose_threads("2") == 2
    with pytest.raises(ValueError, match="at least 1"):
        choose_threads(0)


@pytest.mark.parametrize("busy", [0.0, 0.4, 1.0, 1.6, 64.0])
def test_auto_leaves_the_busy_cpus_alone(busy):
    expected = max(1, available_cpus() - round(busy))
    assert choose_threads("auto", busy) == choose_threads(None, busy) == expected


def test_a_busy_process_is_seen_and_auto_backs_off():
    loop = "import time\nend = time.time() + 30\nwhile time.time() < end: pass\n"
    busy = subprocess.Popen([sys.executable, "-c", loop])
    try:
        time.sleep(0.5)
        seen = measure_busy_cpus(1.0)
    finally:
        busy.kill()
        busy.wait()
    assert seen is not None and seen >= 0.6
    assert choose_threads("auto", seen) <= max(1, available_cpus() - 1)


def _stat(*cpus: tuple[int, int]) -> str:
    """A /proc/stat text whose per-CPU lines have the given (busy, idle) jiffies."""
    lines = [f"cpu  {sum(b for b, _ in cpus)} 0 0 {sum(i for _, i in cpus)} 0 0 0 0 0 0"]
    lines += [f"cpu{k} {b} 0 0 {i} 0 0 0 0 0 0" for k, (b, i) in enumerate(cpus)]
    return "\n".join([*lines, "intr 1 2 3", "ctxt 5"]) + "\n"


@pytest.mark.parametrize(("allowed", "expected"), [({0, 1}, 1.0), ({1}, 0.0), ({0}, 1.0)])
def test_only_this_process_cpus_count_as_busy(monkeypatch, allowed, expected):
    """Another job keeping CPU 0 busy takes nothing from a process pinned to CPU 1 (taskset,
    SLURM, docker --cpuset-cpus)."""
    texts = iter([_stat((100, 100), (0, 200)), _stat((300, 100), (0, 400))])  # cpu0 busy
    monkeypatch.setattr("ssam.threads._read_stat", lambda: next(texts))
    monkeypatch.setattr("ssam.threads.allowed_cpus", lambda: allowed)
    assert measure_busy_cpus(0.0) == pytest.approx(expected)


def test_launched_processes_share_the_cpus(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    try:
        count, line = apply_threads("auto")
        assert count == max(1, available_cpus() // 2) and "shared by 2 processes" in line
        assert apply_threads("auto", processes=1)[1].endswith("at start)")
    finally:
        torch.set_num_threads(before)


def test_apply_sets_torchs_count():
    before = torch.get_num_threads()
    try:
        assert apply_threads(1) == (1, "torch threads: 1 (as asked)")
        assert torch.get_num_threads() == 1
        count, line = apply_threads("auto")
        assert torch.get_num_threads() == count and "auto:" in line
    finally:
        torch.set_num_threads(before)


def _ssam(*args):
    return subprocess.run(
        [sys.executable, "-m", "ssam", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_the_commands_take_threads(adapter, tiny_checkpoint, tmp_path, kvasir_pair):
    from PIL import Image

    image = tmp_path / "polyp.png"
    Image.fromarray(kvasir_pair[0]).save(image)
    common = ["--adapter", adapter, "--sam-checkpoint", tiny_checkpoint, "--offline"]
    done = _ssam("predict", image, "-o", tmp_path / "out", *common, "--threads", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "torch threads: 1 (as asked)" in done.stderr
    auto = _ssam("predict", image, "-o", tmp_path / "out2", *common)
    assert auto.returncode == 0 and "torch threads: " in auto.stderr and "(auto: " in auto.stderr
    for bad in ("0", "many"):
        refused = _ssam("predict", image, "-o", tmp_path / "out3", *common, "--threads", bad)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert "--threads takes a number of at least 1 or 'auto'" in refused.stderr
    config = _ssam("train", "--data", tmp_path, "--label", "x", "--set", "threads=0")
    assert config.returncode == 2 and "threads must be at least 1" in config.stderr
