"""``ssam predict`` launched as several processes: each predicts its shard of the cases once,
the outputs equal a single process's byte for byte, the summary holds every case, and a
second launch skips them all. Shards are a pure function, tested on its own first."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from ssam.inference.distributed import (
    Processes,
    case_size,
    gather_outcomes,
    plan_shards,
    shard_cases,
)
from ssam.inference.files import CaseOutcome
from ssam.inference.inputs import InputCase, discover_cases
from ssam.threads import apply_threads, available_cpus


def named_cases(*names: str) -> list[InputCase]:
    return [InputCase(name, Path(f"/cohort/{name}.png")) for name in names]


def ids(shards: list[list[InputCase]]) -> list[list[str]]:
    return [[case.case_id for case in shard] for shard in shards]


def test_every_nth_case_of_the_sorted_list():
    cases = named_cases("d", "a", "c", "b", "e")
    assert ids(plan_shards(cases, 2)) == [["a", "c", "e"], ["b", "d"]]
    # the order the inputs were named in does not matter
    assert shard_cases(cases[::-1], 1, 2) == shard_cases(cases, 1, 2)
    assert ids(plan_shards(cases, 1)) == [["a", "b", "c", "d", "e"]]


def test_sizes_balance_the_shards_largest_first():
    cases = named_cases("a", "b", "c", "d", "e")
    # b (10) -> 0; d (5) -> 1; c (4) -> 1 (9); e (2) -> 1 (11); a (1) -> 0 (11)
    assert ids(plan_shards(cases, 2, [1, 10, 4, 5, 2])) == [["a", "b"], ["c", "d", "e"]]
    # equal sizes: ties go by case id, so the split is the same in every process
    assert ids(plan_shards(cases, 2, [7] * 5)) == [["a", "c", "e"], ["b", "d"]]


def test_every_case_lands_in_exactly_one_shard():
    rng = np.random.default_rng(0)
    cases = named_cases(*(f"case{k:03d}" for k in range(57)))
    sizes = [int(s) for s in rng.integers(1, 1000, len(cases))]
    for count in (1, 2, 3, 8, 60):
        for shards in (plan_shards(cases, count), plan_shards(cases, count, sizes)):
            assert len(shards) == count
            assert sorted(c for shard in shards for c in ids([shard])[0]) == sorted(
                c.case_id for c in cases
            )
        loads = [sum(sizes[cases.index(c)] for c in shard) for shard in shards]
        assert max(loads) - min(loads) <= max(sizes)  # largest-first greedy bound
    assert [len(s) for s in plan_shards(cases[:2], 4)] == [1, 1, 0, 0]


def test_bad_shard_requests_are_refused():
    cases = named_cases("a", "b")
    with pytest.raises(ValueError, match="at least 1"):
        plan_shards(cases, 0)
    with pytest.raises(ValueError, match="0..1"):
        shard_cases(cases, 2, 2)
    with pytest.raises(ValueError, match="1 entries for 2 cases"):
        plan_shards(cases, 2, [5])


def test_case_size_of_a_file_a_series_and_a_missing_path(tmp_path):
    (tmp_path / "one.png").write_bytes(b"x" * 10)
    series = tmp_path / "series"
    series.mkdir()
    for k in range(3):
        (series / f"{k}.dcm").write_bytes(b"y" * 7)
    assert case_size(InputCase("one", tmp_path / "one.png")) == 10
    assert case_size(InputCase("series", series)) == 21
    assert case_size(InputCase("gone", tmp_path / "gone.png")) == 0


def test_a_single_process_keeps_its_outcomes():
    outcomes = [CaseOutcome("b", "b.png", "done"), CaseOutcome("a", "a.png", "failed", "bad")]
    assert gather_outcomes(outcomes, named_cases("a", "b"), Processes()) == outcomes


def test_auto_threads_share_the_cpus_among_processes():
    before = torch.get_num_threads()
    try:
        count, line = apply_threads("auto", processes=2)
        assert count == max(1, available_cpus() // 2) == torch.get_num_threads()
        assert f"auto: {available_cpus()} CPUs shared by 2 processes" in line
        assert apply_threads(3, processes=2) == (3, "torch threads: 3 (as asked)")
    finally:
        torch.set_num_threads(before)


# --- two CPU processes (gloo) through real launchers --------------------------------------


def crop_volume(source: Path, path: Path, first: int, count: int = 2) -> Path:
    """``count`` slices of a real volume from slice ``first``, its affine moved along."""
    image = nib.load(source)
    data = np.asanyarray(image.dataobj)[:, :, first : first + count]
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ [0, 0, first] + image.affine[:3, 3]
    nib.save(nib.Nifti1Image(data, affine, image.header), path)
    return path


@pytest.fixture(scope="module")
def cohort(shared_data, tmp_path_factory) -> Path:
    """Real cases: 3 Kvasir JPEGs, one as PNG, 2 cropped MS-lesion FLAIR volumes, and a
    corrupt PNG (its failure must reach the summary and the exit status)."""
    folder = tmp_path_factory.mktemp("cohort") / "in"
    folder.mkdir()
    images = sorted((shared_data / "kvasir-seg" / "images").glob("*.jpg"))[:4]
    for image in images[:3]:
        shutil.copy(image, folder / image.name)
    Image.open(images[3]).save(folder / f"{images[3].stem}.png")
    mri = shared_data / "ms-lesions-mri" / "imagesTr"
    crop_volume(mri / "patient07_0000.nii.gz", folder / "patient07.nii.gz", 88)
    crop_volume(mri / "patient19_0000.nii.gz", folder / "patient19.nii.gz", 80)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def launch(launcher: list[str], args: list[str], cache: Path) -> subprocess.CompletedProcess:
    """``LAUNCHER -m ssam predict ARGS``, offline (launchers here start two CPU processes)."""
    env = {
        **os.environ,
        "SSAM_CACHE": str(cache),
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",  # the summary table unwrapped
        "PYTHONIOENCODING": "utf-8",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(cache / "hf"),  # no accelerate config of the machine's user
    }
    command = [*launcher, "-m", "ssam", "predict", *args, "--no-progress", "--offline"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def accelerate_launcher() -> list[str]:
    """``accelerate launch`` of 2 processes (its torchrun path; ``--cpu`` would start one)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
        "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
    ]  # fmt: skip


def summary_rows(stdout: str) -> list[list[str]]:
    """The summary table's rows: [case, (process,) status, note] each."""
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in stdout.splitlines()]
    return [row for row in rows if len(row) >= 3 and row[0] not in ("", "case")]


def files_of(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_two_processes_share_the_cases_and_match_one(
    cohort, adapter, tiny_checkpoint, tmp_path, single_thread
):
    base = ["--adapter", str(adapter), "--sam-checkpoint", str(tiny_checkpoint)]
    # The reference is one process started the same way, on one thread: in another setting
    # (2 threads, or inside pytest) floats may sum in another order and a pixel where two
    # labels tie to the last bit may tip (seen here).
    one = [str(cohort), "-o", str(tmp_path / "one"), *base, "--threads", "1"]
    single = launch([sys.executable], one, tmp_path)
    assert single.returncode == 1, single.stderr[-3000:]  # the corrupt PNG
    assert {len(row) for row in summary_rows(single.stdout)} == {3}  # no process column

    shared = tmp_path / "two"
    first = launch(TORCHRUN, [str(cohort), "-o", str(shared), *base, "--threads", "1"], tmp_path)
    assert first.returncode != 0, first.stdout  # the corrupt PNG fails in one of them
    assert "predicting with 2 processes (gloo on cpu)" in first.stderr, first.stderr[-3000:]

    # each case once, by the process its shard names; every case in the one summary
    cases, _ = discover_cases([cohort])
    shards = plan_shards(cases, 2, [case_size(case) for case in cases])
    expected = {case.case_id: str(k) for k, shard in enumerate(shards) for case in shard}
    assert all(shards) and len(expected) == 7
    rows = summary_rows(first.stdout)
    assert Counter(row[0] for row in rows) == Counter(list(expected)), first.stdout
    assert {row[0]: row[1] for row in rows} == expected
    assert {row[0]: row[2] for row in rows} == {
        name: "failed" if name == "broken" else "done" for name in expected
    }
    assert "FAILED broken" in first.stdout and "6 done, 0 skipped, 1 failed" in first.stdout
    outputs = files_of(shared)
    assert len([name for name in outputs if name.endswith(".labels.json")]) == 6
    assert len([name for name in outputs if name.endswith(".json")]) == 12  # case + labels
    # byte for byte what one process writes: label maps, overlays, case JSONs
    assert outputs == files_of(tmp_path / "one")

    # a second launch (through accelerate this time) skips every case it finds done
    stamps = {path.name: path.stat().st_mtime_ns for path in shared.iterdir()}
    second = launch(accelerate_launcher(), [str(cohort), "-o", str(shared), *base], tmp_path)
    assert second.returncode != 0, second.stdout
    assert "shared by 2 processes" in second.stderr, second.stderr[-3000:]
    rows = summary_rows(second.stdout)
    assert {row[0]: row[2] for row in rows} == {
        name: "failed" if name == "broken" else "skipped" for name in expected
    }, second.stdout
    assert "0 done, 6 skipped, 1 failed" in second.stdout
    assert {path.name: path.stat().st_mtime_ns for path in shared.iterdir()} == stamps
