"""Prediction over several processes (GPUs, nodes): which cases each one takes, and the
outcomes of all of them in one list.

``ssam predict`` launched by ``torchrun`` or ``accelerate launch`` runs one copy per process.
Every copy discovers the same cases; ``plan_shards`` splits them the same way everywhere
(sorted by case id, so the order the inputs were named in does not matter), each process
predicts its shard (skipping its cases whose outputs exist, as a single process does) and
``gather_outcomes`` hands every process all outcomes, back in the order of the cases.

Sharding is by the full case list, never by the cases still to do: which outputs exist can
change while the processes look (another process finishing a case), and a case must never
fall between two shards or land in two. The engine is 🤗 Accelerate's ``PartialState``, as in
training: the gloo backend on CPUs, NCCL and ``cuda:LOCAL_RANK`` on GPUs.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from ssam.errors import ConfigError
from ssam.inference.files import CaseOutcome, PredictOptions, predict_cases
from ssam.inference.inputs import InputCase
from ssam.inference.predictor import SSAMPredictor


@dataclass(frozen=True)
class Processes:
    """This process's place among those launched together.

    ``index``: its global rank (0 is the main process); ``count``: all processes, on all
    machines; ``local_count``: processes on this machine (they share its CPUs); ``device``:
    the torch device it predicts on.
    """

    index: int = 0
    count: int = 1
    local_count: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def describe(self) -> str:
        """``2 processes (gloo on cpu)``, for the line the main process prints."""
        from torch.distributed import get_backend, is_initialized

        backend = get_backend() if is_initialized() else "no backend"
        return f"{self.count} processes ({backend} on {self.device.split(':')[0]})"


def launched_processes() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 when run directly)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(1, int(value))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={value!r} is not a number of processes") from None


def start_processes(device: str) -> Processes:
    """Join the launched processes; a single process (no launcher) gets ``device`` as given
    and starts nothing. Several: ``device`` ``cpu`` runs them on CPUs (gloo), anything else
    on the accelerator Accelerate assigns to this process (``cuda:LOCAL_RANK``)."""
    world = launched_processes()
    if world == 1:
        return Processes(device=device)
    from accelerate import PartialState

    state = PartialState(cpu=device == "cpu")
    if state.num_processes != world:
        raise ConfigError(
            f"launched as {world} processes but they could not be joined (device {device!r} "
            f"found no distributed backend): use --device cpu, or --device cuda on GPUs"
        )
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return Processes(state.process_index, state.num_processes, local, str(state.device))


@contextmanager
def local_main_first(processes: Processes) -> Iterator[None]:
    """The machine's first process runs the block before its other processes do (it fills
    the weights and SVD caches that they then read instead of writing them too)."""
    if processes.count == 1:
        yield
        return
    from accelerate import PartialState

    with PartialState().local_main_process_first():
        yield


def finish_processes(processes: Processes) -> None:
    """Wait for all processes, then leave the process group (no-op for a single process)."""
    if processes.count == 1:
        return
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    state.destroy_process_group()


def case_size(case: InputCase) -> int:
    """Bytes of a case's input: its file, or the files of its DICOM series folder."""
    path = Path(case.path)
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0  # unreadable: its process records the failure when it gets there


def plan_shards(
    cases: Sequence[InputCase], count: int, sizes: Sequence[int] | None = None
) -> list[list[InputCase]]:
    """Split ``cases`` among ``count`` processes: one list per process, each sorted by case id.

    Without ``sizes``: every ``count``-th case of the list sorted by case id, from position
    ``index``. With ``sizes`` (one per case, e.g. ``case_size``): balanced by size, largest
    first, each case to the process with the least so far (ties: the lower index). The same
    inputs give the same split in every process; every case lands in exactly one shard.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if sizes is not None and len(sizes) != len(cases):
        raise ValueError(f"sizes has {len(sizes)} entries for {len(cases)} cases")
    if sizes is None:
        ordered = sorted(cases, key=_case_key)
        return [ordered[index::count] for index in range(count)]
    shards: list[list[InputCase]] = [[] for _ in range(count)]
    loads = [(0, index) for index in range(count)]  # (bytes so far, index): a min-heap
    largest_first = sorted(zip(cases, sizes, strict=True), key=lambda p: (-p[1], _case_key(p[0])))
    for case, size in largest_first:
        load, index = heapq.heappop(loads)
        shards[index].append(case)
        heapq.heappush(loads, (load + size, index))
    return [sorted(shard, key=_case_key) for shard in shards]


def _case_key(case: InputCase) -> tuple[str, str]:
    return case.case_id, str(case.path)


def shard_cases(
    cases: Sequence[InputCase], index: int, count: int, sizes: Sequence[int] | None = None
) -> list[InputCase]:
    """The cases of process ``index`` of ``count`` (see ``plan_shards``)."""
    if not 0 <= index < count:
        raise ValueError(f"index must be in 0..{count - 1}, got {index}")
    return plan_shards(cases, count, sizes)[index]


def gather_outcomes(
    outcomes: Sequence[CaseOutcome], cases: Sequence[InputCase], processes: Processes
) -> list[CaseOutcome]:
    """Every process's outcomes (each marked with its process index), in the order of
    ``cases``; every process gets the whole list. A single process returns its own."""
    if processes.count == 1:
        return list(outcomes)
    from accelerate.utils import gather_object

    mine = [replace(o, process=processes.index) for o in outcomes]
    everyone = gather_object([mine])  # one list per process, in process order
    position = {case.case_id: k for k, case in enumerate(cases)}
    merged = [o for shard in everyone for o in shard]
    return sorted(merged, key=lambda o: position.get(o.case_id, len(position)))


def predict_shared_cases(
    predictor: SSAMPredictor,
    cases: Sequence[InputCase],
    options: PredictOptions,
    processes: Processes,
    show_progress: bool = True,
) -> list[CaseOutcome]:
    """``predict_cases`` on this process's shard of ``cases`` (balanced by input size), then
    the outcomes of all processes in the order of ``cases``. One process: all cases, as
    ``predict_cases``. Progress bars show on the main process only."""
    if processes.count == 1:
        return predict_cases(predictor, cases, options, show_progress=show_progress)
    sizes = [case_size(case) for case in cases]
    mine = shard_cases(cases, processes.index, processes.count, sizes)
    show = show_progress and processes.is_main
    return gather_outcomes(predict_cases(predictor, mine, options, show), cases, processes)
