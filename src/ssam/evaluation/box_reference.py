"""The expert-prompt reference: the base model prompted with the ground-truth box.

What S-SAM's label names are measured against (DESIGN.md 1b: LiteMedSAM was trained with box
prompts). For every label a 2D case contains, each 8-connected component of its ground-truth
mask gets its tight box (two kidneys: two boxes, not one box over the spine); the base decodes
each box alone, with no label token (``ssam.inference.refine``), and the label's predicted mask
is the union of the components' masks (probability >= 0.5), scored by Dice against the whole
ground truth at the original resolution. Cases without the label have no box to give and are
not scored; volumes are not scored (a box per slice is another protocol).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from ssam.data.cases import Case, read_case_image, read_case_labels
from ssam.evaluation.metrics import compute_case_metrics
from ssam.inference.predictor import SSAMPredictor
from ssam.inference.refine import RefinePrompt, refine_logits


def component_boxes(mask: np.ndarray) -> list[tuple[float, float, float, float]]:
    """(H, W) bool -> one (x0, y0, x1, y1) pixel box per 8-connected component."""
    components, _ = ndimage.label(mask, structure=np.ones((3, 3)))
    boxes = []
    for rows, cols in ndimage.find_objects(components):
        boxes.append((cols.start, rows.start, cols.stop - 1, rows.stop - 1))
    return [tuple(float(v) for v in box) for box in boxes]


@torch.inference_mode()
def box_prompt_mask(
    predictor: SSAMPredictor, embedding: torch.Tensor, info, truth: np.ndarray
) -> np.ndarray:
    """(H, W) bool: the union of the base's masks for each component box of ``truth``."""
    predicted = np.zeros(truth.shape, dtype=bool)
    for box in component_boxes(truth):
        logits = refine_logits(predictor.model, embedding, None, info, RefinePrompt.build(box=box))
        predicted |= logits.cpu().numpy() >= 0.0  # probability >= 0.5
    return predicted


def score_box_reference(
    predictor: SSAMPredictor, cases: Sequence[Case], labels: Sequence[str]
) -> dict[str, list[float]]:
    """Dice per label of the box-prompted base on each 2D case containing that label."""
    scores: dict[str, list[float]] = {name: [] for name in labels}
    for case in cases:
        image, properties = read_case_image(case)
        if not properties.is_2d:
            continue
        target = read_case_labels(case)[0][..., 0]
        intensity, value_range = predictor.intensity_mapping(image, properties)
        pixels = predictor.scale_slices(image, 2, [0], intensity, value_range)
        inputs, infos = predictor.preprocess(pixels)
        embedding = predictor.encode(inputs)[0]
        for name in labels:
            truth = target == case.labels[name]
            if truth.any():
                predicted = box_prompt_mask(predictor, embedding, infos[0], truth)
                scores[name].append(float(compute_case_metrics(predicted, truth, None)["dice"]))
    return scores
