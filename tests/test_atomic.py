"""Atomic writes: whole files or none, with the permissions the umask gives."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from ssam.atomic import atomic_path, current_umask, write_text_atomic


@pytest.fixture()
def umask():
    """Set the process umask for one test, and put it back."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_honour_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask
    path = write_text_atomic(tmp_path / "config.yaml", "a: 1\n")
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == mode


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "summary.json", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert path.read_text() == "old" and sorted(tmp_path.iterdir()) == [path]


def test_an_adapter_is_readable_by_the_group(tmp_path, tiny_checkpoint):
    """The whole chain in a fresh process under umask 022: adapter files come out 0644."""
    code = (
        "import os, torch; os.umask(0o022);"
        "from ssam.config.model import ModelConfig;"
        "from ssam.factory import create_model;"
        "from ssam.tuning.adapter import save_adapter;"
        "m = create_model(ModelConfig(variant='tiny', image_size=64, text_encoder='tiny',"
        f" sam_checkpoint={str(tiny_checkpoint)!r}, allow_download=False));"
        f"save_adapter(m, {str(tmp_path / 'a.safetensors')!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert stat.S_IMODE((tmp_path / "a.safetensors").stat().st_mode) == 0o644
