"""Atomic file writes: a temporary file in the target's folder, renamed over the target only
when it is complete (``os.replace``), so a reader or a crash never leaves half a file.

The file gets the permissions a plain ``open(path, "w")`` would give (0666 less the umask),
not ``mkstemp``'s private 0600: colleagues who can read a run's images can read its adapter."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where the system shows it (Linux), since
    setting it to read it back races with other threads creating files."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temporary_prefix(path: str | os.PathLike[str]) -> str:
    """How the names of ``path``'s temporary files start (``.NAME.``): hidden, and findable
    again after a killed process left one behind (``is_temporary_of``)."""
    return f".{Path(path).name}."


def is_temporary_of(name: str, path: str | os.PathLike[str]) -> bool:
    """Whether the file name ``name`` is one of ``atomic_path``'s temporaries for ``path``."""
    return name.startswith(temporary_prefix(path))


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to ``path`` to write; renamed onto ``path`` when the block ends
    without an error, deleted otherwise. The parent folder is created if needed. ``suffix``
    ends the temporary name: give the target's own (".png", ".nii.gz") to writers that
    choose the format by it. A SIGKILL can leave the temporary file, never a half ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # after writing: some writers (safetensors)
        os.replace(tmp, path)  # replace the temporary file with one of their own, 0600
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path`` as a Path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, flushed to disk) to ``path`` atomically; on any error the previous
    content of ``path`` (if any) is left untouched."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)
