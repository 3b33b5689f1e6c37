"""Read official SAM checkpoints safely and fit them to a model of another input size.

Checkpoints are read on the CPU with ``weights_only=True`` (or from safetensors): a file that
would run code when unpickled is refused. Every failure is a ``CheckpointError`` naming the file.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ssam.atomic import atomic_path
from ssam.errors import CheckpointError
from ssam.sam.families import get_family, guess_variants
from ssam.sam.variants import SamSpec

StateDict = dict[str, torch.Tensor]
_WRAPPER_KEYS = ("model", "state_dict")


def read_state_dict(path: str | Path) -> StateDict:
    """The tensors of a ``.pth``/``.pt`` (torch zip or legacy pickle) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    return _unwrap_state_dict(load_untrusted(path), path)


def load_untrusted(path: str | Path, what: str = "checkpoint") -> object:
    """``torch.load`` of a file that may come from anyone: CPU, ``weights_only=True``; every
    failure is one ``CheckpointError`` line naming the file. A file that would import Python
    objects when unpickled is refused as unsafe, with no advice to lower the guard."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        glob = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) (\S+)", str(err))
        if glob:
            raise CheckpointError(
                f"{path}: refused as unsafe: this {what} references the Python object "
                f"{glob.group(1)}, which could run code when loaded; S-SAM loads only files of "
                "plain tensors and numbers"
            ) from None
        raise CheckpointError(
            f"{path}: not a PyTorch {what} of tensors (unreadable or foreign pickle content)"
        ) from None
    except Exception as err:  # noqa: BLE001 - parsing untrusted bytes fails in many ways
        raise CheckpointError(
            f"{path}: unreadable {what}, truncated or not a PyTorch file ({_first_line(err)})"
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _unwrap_state_dict(obj: object, path: Path) -> StateDict:
    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict) and len(obj) <= 4:
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not named tensors: {bad[:5]}")
    return obj


def check_variant(state: StateDict, spec: SamSpec, path: str | Path) -> None:
    """Refuse a checkpoint of another architecture, naming the variant it looks like."""
    family = get_family(spec)
    found = family.signature(state)
    if found is None:
        guesses = guess_variants(state)
        looks = f" (it looks like {' or '.join(guesses)})" if guesses else ""
        raise CheckpointError(
            f"{path}: not a {spec.label} checkpoint: no {family.name} image encoder in it"
            f"{looks} (first keys: {list(state)[:3]})"
        )
    expected = family.spec_signature(spec)
    if found != expected:
        guesses = guess_variants(state)
        looks = f" (looks like {' or '.join(guesses)})" if guesses else ""
        raise CheckpointError(
            f"{path}: image encoder has {_describe(found)}{looks}, "
            f"but variant {spec.name} needs {_describe(expected)}"
        )


def _describe(signature: tuple) -> str:
    """A family signature in words: (dims, depths) of either family."""
    dims, depths = signature
    if isinstance(dims, tuple):
        return f"stage widths {list(dims)} and depths {list(depths)}"
    return f"embed dim {dims} and {depths} blocks"


def resize_pos_embed(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """(1, G, G, C) absolute positions -> (1, grid, grid, C): adaptive average pooling when
    shrinking (as the paper), bicubic interpolation when growing."""
    if pos.shape[1] == grid and pos.shape[2] == grid:
        return pos
    x = pos.permute(0, 3, 1, 2).float()
    if grid <= pos.shape[1]:
        x = F.adaptive_avg_pool2d(x, grid)
    else:
        x = F.interpolate(x, size=(grid, grid), mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos.dtype).contiguous()


def resize_rel_pos(table: torch.Tensor, length: int) -> torch.Tensor:
    """(L, C) relative-position table -> (length, C), linearly, as SAM's ``get_rel_pos`` does."""
    if table.shape[0] == length:
        return table
    x = table.float().T.unsqueeze(0)
    x = F.interpolate(x, size=length, mode="linear")
    return x.squeeze(0).T.to(table.dtype).contiguous()


def adapt_state_dict(state: StateDict, model: nn.Module) -> StateDict:
    """Fit a 1024-pixel SAM state dict to ``model``'s input size (timm's checkpoint filter).

    Resizes ``image_encoder.pos_embed`` and every ``rel_pos_h``/``rel_pos_w`` table to the shapes
    ``model`` holds; other tensors pass unchanged (shape errors surface when loading).
    """
    targets = model.state_dict()
    out = dict(state)
    for key, value in state.items():
        target = targets.get(key)
        if target is None or target.shape == value.shape:
            continue
        if key.endswith("pos_embed") and value.dim() == 4:
            out[key] = resize_pos_embed(value, target.shape[1])
        elif key.endswith(("rel_pos_h", "rel_pos_w")) and value.dim() == 2:
            out[key] = resize_rel_pos(value, target.shape[0])
    return out


def check_state_keys(
    state: Mapping[str, object],
    expected: Mapping[str, object],
    path: str | Path,
    what: str,
    error: type[Exception] = CheckpointError,
) -> None:
    """Raise ``error`` when the keys of ``state`` (read from ``path``) differ from ``expected``.

    The message names the file, ``what`` it should hold, and how many keys are missing and
    unexpected, with the first five of each.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise error(
            f"{path}: {what}: {len(missing)} missing {missing[:5]}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}"
        )


def load_sam_weights(
    sam: nn.Module, path: str | Path, spec: SamSpec, state: StateDict | None = None
) -> None:
    """Load the official-layout checkpoint at ``path`` into ``sam`` (strict), fitted to its size.

    ``state``: the file's state dict when the caller has already read it.
    """
    if state is None:
        state = read_state_dict(path)
    check_variant(state, spec, path)
    state = adapt_state_dict(state, sam)
    expected = sam.state_dict()
    check_state_keys(state, expected, path, f"keys do not match SAM {spec.name}")
    wrong = [k for k in expected if expected[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{path}: {len(wrong)} tensors have the wrong shape, e.g. {k}: "
            f"{tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in SAM {spec.name}"
        )
    sam.load_state_dict(state, strict=True)


def save_state_dict(state: StateDict, path: str | Path) -> Path:
    """``torch.save`` a state dict atomically (temporary file, then rename); official layout."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp)
    return path
