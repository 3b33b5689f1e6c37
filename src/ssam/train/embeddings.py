"""Image embeddings computed once per image, for methods that leave the image encoder frozen.

A method that trains no image-encoder parameter (``Method.trains_encoder`` False: ``decoder``,
``token``) sees the same embedding of an image at every step, provided the image is not
augmented. Training then encodes every training and validation image (or volume slice) once,
before the first step, keeps the embeddings on disk (``<dataset>-<role>.npy``, float32, one row
per image or slice, read through a memory map; the ``.json`` beside it records what they were
computed from) and trains and validates the prompt path on them: the encoder's cost per step
(75 GFLOP per 256x256 image on LiteMedSAM) is gone. The embeddings are reused by any run whose
encoder weights, input size and samples are the same (a resumed run, or the next learning rate
of a sweep sharing ``embeddings_dir``), and recomputed otherwise.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ssam.atomic import atomic_path, is_temporary_of, write_text_atomic
from ssam.data.samples import SegmentationSamples
from ssam.errors import DataError


def image_rows(samples: SegmentationSamples) -> tuple[list[int], list[int]]:
    """(the first sample index of each distinct image or slice, each sample's image row):
    a slice's labels are separate samples sharing one embedding."""
    firsts: list[int] = []
    rows: list[int] = []
    seen: dict[tuple[int, int], int] = {}
    for index, ref in enumerate(samples.refs):
        key = (ref.case_index, ref.slice_index)
        if key not in seen:
            seen[key] = len(firsts)
            firsts.append(index)
        rows.append(seen[key])
    return firsts, rows


def encoder_digest(encoder: torch.nn.Module) -> str:
    """SHA-256 over the encoder's state (names and values): which weights made an embedding."""
    digest = hashlib.sha256()
    for name, tensor in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def describe_inputs(samples: SegmentationSamples, firsts: Sequence[int]) -> dict:
    """What the embeddings of ``samples`` depend on besides the encoder: the input size,
    pixel mapping and every image file (path, size, modification time) with its slices."""
    files = []
    for index in firsts:
        ref = samples.refs[index]
        for path in samples.cases[ref.case_index].image_paths:
            stat = Path(path).stat()
            files.append([str(path), stat.st_size, stat.st_mtime_ns, ref.slice_index])
    return {
        "input_size": samples.input_size,
        "normalisation": samples.normalisation,
        "intensity": samples.intensity.model_dump(mode="json"),
        "slice_axis": samples.slice_axis,
        "augmented": samples.augment is not None,
        "images": hashlib.sha256(json.dumps(files).encode()).hexdigest(),
        "count": len(firsts),
    }


@torch.no_grad()
def compute_embeddings(
    model, samples: SegmentationSamples, firsts: Sequence[int], path: Path, batch_size: int
) -> None:
    """Encode the images ``firsts`` of ``samples`` in batches into ``path`` (.npy), written
    under a temporary name and renamed when complete. ``model`` is put in eval mode and back."""
    was_training = model.training
    model.eval()
    try:
        with atomic_path(path, suffix=".npy") as temporary:
            out = None
            for start in range(0, len(firsts), batch_size):
                chunk = firsts[start : start + batch_size]
                images = torch.stack([samples[i]["image"] for i in chunk]).to(model.device)
                embeddings = model.encode_images(images).float().cpu().numpy()
                if out is None:
                    shape = (len(firsts), *embeddings.shape[1:])
                    out = np.lib.format.open_memmap(temporary, "w+", np.float32, shape)
                out[start : start + len(chunk)] = embeddings
            out.flush()
            del out
    finally:
        model.train(was_training)


def stored_embeddings(
    model,
    samples: SegmentationSamples,
    *,
    folder: Path,
    name: str,
    encoder: str,
    batch_size: int,
    compute: bool,
) -> tuple[np.ndarray, list[int], bool]:
    """The embeddings of ``samples`` kept as ``folder/name.npy`` (a read-only memory map),
    each sample's row, and whether they were computed now. ``encoder``: the image encoder's
    ``encoder_digest``. With ``compute`` False (a process waiting on another) nothing is
    written, and stored embeddings that do not fit are an error. Runs sharing ``folder``
    take turns (a lock file per name): none reads a file another is replacing."""
    firsts, rows = image_rows(samples)
    path, record = folder / f"{name}.npy", folder / f"{name}.json"
    wanted = {"encoder": encoder, **describe_inputs(samples, firsts)}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".lock-{name}", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fits = _read_record(record) == wanted and _rows_stored(path) == len(firsts)
        if not fits and not compute:
            raise DataError(
                f"{path}: the stored embeddings do not fit this run (another process was to "
                "compute them: is the folder shared by every machine of the launch?)"
            )
        if not fits:
            for leftover in folder.iterdir():  # an interrupted run's temporaries
                if is_temporary_of(leftover.name, path):
                    leftover.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            compute_embeddings(model, samples, firsts, path, batch_size)
            write_text_atomic(record, json.dumps(wanted, indent=1))
        return np.load(path, mmap_mode="r"), rows, not fits


def _rows_stored(path: Path) -> int | None:
    """The rows of a stored .npy, or None where it is missing or unreadable."""
    try:
        return len(np.load(path, mmap_mode="r"))
    except (OSError, ValueError, EOFError):
        return None


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class EmbeddedSamples(Dataset):
    """The samples of a ``SegmentationSamples`` with their image's stored embedding
    (``"embedding"``, (C, h, w) float32) in place of the image."""

    def __init__(
        self, samples: SegmentationSamples, embeddings: np.ndarray, rows: Sequence[int]
    ) -> None:
        if len(rows) != len(samples):
            raise ValueError(f"{len(rows)} embedding rows for {len(samples)} samples")
        self.samples, self.embeddings, self.rows = samples, embeddings, list(rows)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.samples.set_epoch(epoch)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index = key[0] if isinstance(key, tuple) else key
        sample = dict(self.samples[key])
        del sample["image"]
        sample["embedding"] = torch.from_numpy(np.array(self.embeddings[self.rows[index]]))
        return sample
