"""Errors a user can act on. Every message names the file, key, label or shape at fault."""

from __future__ import annotations

import importlib


class SSAMError(Exception):
    """Base class: the CLI prints these as one line, without a traceback."""


class CheckpointError(SSAMError, ValueError):
    """A base checkpoint or weights file is missing, unreadable or of the wrong model."""


class AdapterError(SSAMError, ValueError):
    """An adapter file is unreadable or does not fit the base model it is loaded on."""


class DownloadError(SSAMError, OSError):
    """A download failed or its SHA-256 did not match."""


class DataError(SSAMError, ValueError):
    """A dataset, case, image or mask is missing, corrupt or inconsistent."""


class ConfigError(SSAMError, ValueError):
    """A configuration value is invalid."""


class MissingPackageError(SSAMError, ImportError):
    """A package a command needs is not installed (an environment set up by hand)."""


# What each optional-looking part needs: pip name -> the module(s) it provides (any one).
# All are core dependencies (scripts/setup.sh installs them); this only turns a venv that
# lacks one into an instruction instead of a traceback.
SERVE_PACKAGES = {
    "fastapi": ("fastapi",),
    "uvicorn": ("uvicorn",),
    "python-multipart": ("python_multipart", "multipart"),
}
ONNX_PACKAGES = {"onnx": ("onnx",), "onnxruntime": ("onnxruntime",)}


def require_packages(purpose: str, packages: dict[str, tuple[str, ...]]) -> None:
    """Import each package's module; MissingPackageError naming ``purpose`` and the
    ``pip install`` line for every one that is missing or broken."""
    missing = []
    for name, modules in packages.items():
        for module in modules:
            try:
                importlib.import_module(module)
                break
            except ImportError:
                continue
        else:
            missing.append(name)
    if missing:
        raise MissingPackageError(
            f"{purpose} needs {', '.join(missing)}, not installed in this environment: "
            f"pip install {' '.join(missing)} (or run scripts/setup.sh again)"
        )


def describe_problem(problem: dict, prefix: str = "") -> str:
    """One pydantic error entry as ``field.path: message (got value)``."""
    where = ".".join(str(p) for p in (prefix, *problem.get("loc", ())) if p != "")
    got = problem.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    return f"{where or 'value'}: {problem.get('msg', 'invalid')}{shown}"


def summarise_validation(err: Exception, prefix: str = "") -> str:
    """A pydantic ``ValidationError`` as one line, its problems joined by "; " (other
    exceptions: their first line)."""
    problems = getattr(err, "errors", None)
    if problems is None:
        lines = str(err).strip().splitlines()
        return lines[0] if lines else type(err).__name__
    return "; ".join(describe_problem(problem, prefix) for problem in problems())
