"""Click-to-refine for the web app: decoder-only edits of one label on one slice, with undo.

A finished job's result (``WebSegmentation``) is edited in place: the slice's image embedding
comes from the engine's cache (or, if it was evicted, from encoding the slice the page shows,
its 0-255 pixels rounded to integers), the mask decoder runs once for all labels and once more
per label refined on that slice (``ssam.inference.refine``), and the slice's masks and label
map are rebuilt from those probabilities with the usual rules, so overlaps stay consistent.

The history keeps prompts, not pixels: per (slice, label) the prompt now in force, and per
label a stack of edits (slice, prompt before, prompt after). Undo pops the label's last edit
and decodes the slice again with the prompt before it (none: the plain label prediction).
Decoding is deterministic, so undo restores the slice exactly while its embedding stays cached.

Concurrent calls on one job take turns on the history's lock, and everything an answer holds
(the slice's mask and label map, the label's size, the undo depth) is copied before the lock
is released: another call may change the slice the moment it is.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ssam.data.properties import take_slice
from ssam.data.transforms import PreprocessInfo
from ssam.inference.label_maps import compute_label_map, compute_label_sizes, compute_masks
from ssam.inference.refine import RefinePrompt, refine_probabilities
from ssam.web.cache import tensor_bytes
from ssam.web.engine import SLICE_AXIS, SegmentationEngine, WebSegmentation, embedding_key
from ssam.web.errors import RequestError


@dataclass(frozen=True)
class Edit:
    """One refine call: label ``label`` (0-based) on slice ``index``, prompts before/after."""

    index: int
    label: int
    before: RefinePrompt | None
    after: RefinePrompt


@dataclass(eq=False)
class EditHistory:
    """One job's refinements: prompts in force per (slice, label), undo stacks per label."""

    current: dict[tuple[int, int], RefinePrompt] = field(default_factory=dict)
    undo: dict[int, list[Edit]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def push(self, edit: Edit, depth: int) -> None:
        """Record ``edit`` (now in force); the label's stack keeps its last ``depth`` edits."""
        self.current[edit.index, edit.label] = edit.after
        stack = self.undo.setdefault(edit.label, [])
        stack.append(edit)
        del stack[: max(0, len(stack) - depth)]

    def pop(self, label: int) -> Edit:
        """Take back the label's last edit (409 when there is none)."""
        stack = self.undo.get(label)
        if not stack:
            raise RequestError("label: nothing to undo for this label", status=409)
        edit = stack.pop()
        if edit.before is None:
            self.current.pop((edit.index, edit.label), None)
        else:
            self.current[edit.index, edit.label] = edit.before
        return edit

    def depth(self, label: int) -> int:
        return len(self.undo.get(label, ()))


@dataclass(frozen=True)
class SliceUpdate:
    """What a refine or undo changed: slice ``index`` of label ``label`` (0-based).

    ``mask``/``label_map`` (H, W) are the slice's new label mask and label map, in the
    slice's own pixel order (as the points), not rotated for display; ``prompt`` is the
    one now in force (None: the plain label prediction). ``size`` is the whole label's size
    and ``undo_depth`` its number of edits that undo can take back, both right after this
    change (refine and undo return copies; ``decode_slice`` returns views of the result).
    """

    index: int
    label: int
    mask: np.ndarray
    label_map: np.ndarray
    prompt: RefinePrompt | None
    encoded: bool
    timings: dict[str, float]
    size: dict | None = None
    undo_depth: int = 0


def _spatial(array: np.ndarray, result: WebSegmentation) -> np.ndarray:
    """A 2D result's (..., H, W) arrays as (..., H, W, 1) views, so slices are taken alike."""
    return array if result.is_volume else array[..., None]


def slice_embedding(
    engine: SegmentationEngine, result: WebSegmentation, index: int
) -> tuple[torch.Tensor, PreprocessInfo, bool]:
    """Slice ``index``'s embedding (C, h, w) and info, and whether the encoder had to run."""
    key = embedding_key(result.digest, result.intensity, engine.predictor.image_size, index)
    fallback = (*key, "display")
    item = engine.cache.get(key) or engine.cache.get(fallback)
    if item is not None:
        return item[0], item[1], False
    pixels = take_slice(result.display, SLICE_AXIS, index).astype(np.float32)
    inputs, infos = engine.predictor.preprocess([pixels])
    with engine.model_lock:
        embedding = engine.predictor.encode(inputs).cpu()[0].clone()
    engine.cache.put(fallback, (embedding, infos[0]), tensor_bytes(embedding))
    return embedding, infos[0], True


def decode_slice(
    engine: SegmentationEngine, result: WebSegmentation, history: EditHistory, index: int
) -> SliceUpdate:
    """Decode slice ``index`` for every label with the prompts in force, write its masks and
    label map into ``result``; the returned update's ``label`` is -1 (the caller sets it)."""
    tic = time.perf_counter()
    embedding, info, encoded = slice_embedding(engine, result, index)
    embed_s = time.perf_counter() - tic
    tic = time.perf_counter()
    predictor = engine.predictor
    with engine.model_lock, torch.inference_mode():
        tokens = predictor.model.label_tokens(list(result.labels))
        probs = predictor.decode_probabilities(embedding, info, tokens)
        for (at, k), prompt in history.current.items():
            if at == index:
                probs[k] = refine_probabilities(predictor.model, embedding, tokens[k], info, prompt)
    masks = take_slice(_spatial(result.masks, result), SLICE_AXIS, index)
    label_map = take_slice(_spatial(result.label_map, result), SLICE_AXIS, index)
    masks[...] = compute_masks(probs)
    label_map[...] = compute_label_map(probs).astype(label_map.dtype)
    timings = {"embed": embed_s, "decode": time.perf_counter() - tic}
    return SliceUpdate(index, -1, masks, label_map, None, encoded, timings)


def label_size(result: WebSegmentation, label: int) -> dict:
    """The whole label's size after an edit (as in the job summary's ``sizes``)."""
    spacing = result.properties.spacing if result.spacing_known else None
    name = result.labels[label]
    sizes = compute_label_sizes(result.masks[label : label + 1], [name], spacing, result.is_volume)
    return sizes[name]


def refine_slice(
    engine: SegmentationEngine,
    result: WebSegmentation,
    history: EditHistory,
    edit: tuple[int, int, RefinePrompt],
    depth: int,
    sizes: dict | None = None,
) -> SliceUpdate:
    """Apply ``edit`` = (slice index, label 0-based, prompt) and record it for undo.

    The answer (copies of the slice, the label's size, the undo depth) is taken, and
    ``sizes`` (the job summary's label name -> size) updated, before another call can edit.
    """
    index, label, prompt = edit
    with history.lock:
        before = history.current.get((index, label))
        history.current[index, label] = prompt
        try:
            update = decode_slice(engine, result, history, index)
        except BaseException:
            if before is None:
                history.current.pop((index, label))
            else:
                history.current[index, label] = before
            raise
        history.push(Edit(index, label, before, prompt), depth)
        return _for_label(update, result, history, prompt, label, sizes)


def undo_refine(
    engine: SegmentationEngine,
    result: WebSegmentation,
    history: EditHistory,
    label: int,
    sizes: dict | None = None,
) -> SliceUpdate:
    """Take back the label's last refine: its slice is decoded with the prompt before it
    (the answer taken, and ``sizes`` updated, as in ``refine_slice``)."""
    with history.lock:
        edit = history.pop(label)
        update = decode_slice(engine, result, history, edit.index)
        return _for_label(update, result, history, edit.before, label, sizes)


def _for_label(
    update: SliceUpdate,
    result: WebSegmentation,
    history: EditHistory,
    prompt: RefinePrompt | None,
    label: int,
    sizes: dict | None,
) -> SliceUpdate:
    """The answer to one call: copies, taken while the caller holds ``history.lock``."""
    size = label_size(result, label)
    if sizes is not None:
        sizes[result.labels[label]] = size
    return SliceUpdate(
        update.index,
        label,
        update.mask[label].copy(),
        update.label_map.copy(),
        prompt,
        update.encoded,
        update.timings,
        size,
        history.depth(label),
    )
