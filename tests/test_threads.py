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


def test_apply_sets_torchs_count():
    before = torch.get_num_threads()
    try:
        assert apply_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
