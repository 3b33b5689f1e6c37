"""Errors a user can act on. Every message names the file, key, label or shape at fault."""

from __future__ import annotations


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
