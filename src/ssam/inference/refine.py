"""Click-to-refine: re-run only the mask decoder on one slice with points and/or a box.

A label's mask on one image or slice is decoded again from that slice's image embedding
(the encoder does not run) with SAM's own prompt encoder: positive/negative points and an
optional box become sparse prompts, and the label's text token is appended to them, exactly
as ``SSAM.decode`` does for a label alone (DESIGN.md 5: points and boxes stay usable in the
same model). The logits then take the predictor's path back to the original size
(``SSAM.upscale``, ``restore_to_original``, sigmoid), so with no points and no box the result
equals ``SSAMPredictor.decode_probabilities`` for that label.

Coordinates: (x, y) = (column, row) in the original slice's pixels, a pixel's index naming
its centre, as SAM's prompts. ``map_coords_to_input`` follows the preprocessing (resize of
the longest side to S, bilinear with ``align_corners=False``, then zero padding at the bottom
and right, which moves nothing): the centre of original pixel x lands at ``(x + 0.5) * s``
in resized continuous coordinates, i.e. at model-input pixel index ``(x + 0.5) * s - 0.5``,
with s = resized / original per axis. (SAM's ``ResizeLongestSide.apply_coords`` scales the
index itself, ``x * s``, half an original pixel off unless s = 1.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ssam.data.transforms import PreprocessInfo, restore_to_original
from ssam.model import SSAM


@dataclass(frozen=True)
class RefinePrompt:
    """Points and/or a box on one slice, in original-slice pixels.

    Attributes:
        points: (N, 2) float (x, y); N may be 0.
        point_labels: (N,) int, 1 positive (inside the label), 0 negative (outside).
        box: (x0, y0, x1, y1) with x0 <= x1, y0 <= y1, or None.
    """

    points: np.ndarray
    point_labels: np.ndarray
    box: tuple[float, float, float, float] | None = None

    @classmethod
    def build(
        cls,
        points: Sequence[Sequence[float]] | np.ndarray = (),
        point_labels: Sequence[int] | np.ndarray = (),
        box: Sequence[float] | None = None,
    ) -> RefinePrompt:
        """Checked prompt; ValueError naming what is wrong (shape, label value, box order)."""
        coords = np.asarray(points, dtype=np.float64).reshape(-1, 2) if len(points) else None
        if coords is None:
            coords = np.zeros((0, 2))
        labels = np.asarray(point_labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != coords.shape[0]:
            raise ValueError(f"{coords.shape[0]} points but {labels.shape[0]} point labels")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"point labels must be 1 (positive) or 0 (negative), got {labels}")
        if not np.isfinite(coords).all():
            raise ValueError("point coordinates must be finite numbers")
        if box is not None:
            box = tuple(float(v) for v in box)
            if len(box) != 4 or not np.isfinite(box).all():
                raise ValueError(f"a box is 4 finite numbers (x0, y0, x1, y1), got {box}")
            if box[0] > box[2] or box[1] > box[3]:
                raise ValueError(f"box {box} needs x0 <= x1 and y0 <= y1")
        return cls(coords, labels, box)  # type: ignore[arg-type]

    @property
    def is_empty(self) -> bool:
        return self.points.shape[0] == 0 and self.box is None

    def check_inside(self, height: int, width: int) -> None:
        """ValueError unless every point and box corner lies in [0, W-1] x [0, H-1]."""
        corners = self.points
        if self.box is not None:
            corners = np.concatenate([corners, np.reshape(self.box, (2, 2))])
        outside = (corners < 0).any(axis=1) | (corners[:, 0] > width - 1)
        outside |= corners[:, 1] > height - 1
        if outside.any():
            raise ValueError(
                f"point or box corner {corners[outside][0].tolist()} lies outside the "
                f"{width} x {height} (width x height) slice"
            )


def map_coords_to_input(coords: np.ndarray, info: PreprocessInfo) -> np.ndarray:
    """(..., 2) (x, y) original-slice pixels -> model-input pixels, float64 (module doc)."""
    coords = np.asarray(coords, dtype=np.float64)
    (height, width), (new_h, new_w) = info.original_size, info.resized_size
    scale = np.array([new_w / width, new_h / height])
    return (coords + 0.5) * scale - 0.5


@torch.inference_mode()
def refine_logits(
    model: SSAM,
    embedding: torch.Tensor,
    token: torch.Tensor | None,
    info: PreprocessInfo,
    prompt: RefinePrompt | None = None,
) -> torch.Tensor:
    """One slice's embedding (C, h, w) + one label token (1, 1, C) or (1, C) + points/box ->
    logits (H, W) float32 at the original slice size (``info``). ``token`` None: the points
    and box alone, as SAM was prompted (the expert-prompt reference)."""
    device = model.device
    if token is not None:
        token = token.reshape(1, 1, -1).to(device)
    points = boxes = None
    if prompt is not None and prompt.points.shape[0]:
        coords = torch.as_tensor(map_coords_to_input(prompt.points, info), dtype=torch.float32)
        labels = torch.as_tensor(prompt.point_labels, dtype=torch.int64)
        points = (coords[None].to(device), labels[None].to(device))
    if prompt is not None and prompt.box is not None:
        corners = map_coords_to_input(np.reshape(prompt.box, (2, 2)), info)
        boxes = torch.as_tensor(corners.reshape(1, 4), dtype=torch.float32, device=device)
    low_res = model.decode(embedding[None].to(device), token, points=points, boxes=boxes)
    logits = model.upscale(low_res)[:, 0].float()
    return restore_to_original(logits, info)[0]


def refine_probabilities(
    model: SSAM,
    embedding: torch.Tensor,
    token: torch.Tensor,
    info: PreprocessInfo,
    prompt: RefinePrompt | None = None,
) -> np.ndarray:
    """``refine_logits`` as probabilities (H, W) float32 in [0, 1]."""
    return refine_logits(model, embedding, token, info, prompt).sigmoid().cpu().numpy()
