"""A command whose packages are missing says which and how to install them, in one line.

The page's and the ONNX backends' packages are core dependencies (scripts/setup.sh installs
them), but an environment set up by hand may lack one. Each test runs ``ssam`` in a real
process whose import system refuses the named packages, as a venv without them would: a
fresh venv per case would have to install torch and the rest again (gigabytes, minutes).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ssam.errors import ONNX_PACKAGES, SERVE_PACKAGES

# Runs the CLI with the given top-level packages not found on sys.path (the path finder
# answers None for them, as it does for a package that is not installed).
WITHOUT = """
import sys
from importlib.machinery import PathFinder

class Without(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return None
        return super().find_spec(name, path, target)

BLOCKED = set(sys.argv[1].split(","))
sys.meta_path[:] = [Without if f is PathFinder else f for f in sys.meta_path]
from ssam.cli.main import main
main(sys.argv[2:])
"""


def ssam_without(blocked: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT, blocked, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"},
    )


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssam: error: "), done.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("blocked", "named"),
    [
        ("fastapi", "pip install fastapi "),
        ("uvicorn", "pip install uvicorn "),
        ("python_multipart,multipart", "pip install python-multipart "),
        ("fastapi,uvicorn", "pip install fastapi uvicorn "),
    ],
)
def test_serve_without_its_packages_names_the_install(blocked, named, tmp_path):
    done = ssam_without(blocked, "serve", "--adapter", tmp_path / "a.safetensors", "--offline")
    line = one_error_line(done)
    assert line.startswith("ssam: error: ssam serve needs ") and named in line, line


def test_onnx_commands_without_onnxruntime_name_the_install(adapter, tiny_checkpoint, tmp_path):
    """Both fail before the model loads (an export used to run, then die in its check)."""
    base = ["--adapter", adapter, "--sam-checkpoint", tiny_checkpoint, "--offline"]
    export = ssam_without("onnxruntime", "export", "--onnx", "-o", tmp_path / "onnx", *base)
    assert "ssam export --onnx needs onnxruntime" in one_error_line(export)
    assert not (tmp_path / "onnx").exists()
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    predict = ssam_without("onnx", "predict", image, "-o", tmp_path, *base, "--backend", "onnx")
    assert "--backend onnx needs onnx, " in one_error_line(predict)
    assert "pip install onnx " in one_error_line(predict)


def test_the_packages_are_core_dependencies():
    """What the README's set-up installs (``pip install -e .``) holds the page and ONNX."""
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
    core = set(re.findall(r'^\s*"([A-Za-z0-9_.-]+)', block, re.M))
    assert set(SERVE_PACKAGES) | set(ONNX_PACKAGES) <= core
    assert re.search(r"^serve = \[\]$", text, re.M)  # kept, empty, for old install lines
