"""Small image fingerprints, to find near-duplicate 2D images across a train/validation split.

Frames of one video, or views and mirrored copies of one patient's image, are near-identical;
when the file names hold no patient or video id (``1.png`` ... ``151.png``), only the pixels
show it. Images of one kind (colonoscopies, say) look alike at a glance, so a glance is only
the first step:

1. a *coarse* print: the grey image box-averaged to 16 x 16, zero mean, unit norm; each
   validation image keeps the ``CANDIDATES`` training images whose prints correlate best;
2. a *detail* print: the grey image at 64 x 64 less its 7 x 7 local mean (edges and texture,
   which distinct images do not share); a candidate is a near-duplicate when the detail prints
   correlate to ``NEAR_CORRELATION`` or more at some shift of up to ``MAX_SHIFT`` pixels
   (camera motion: 6 % of the image). Mirror images are compared too.

Measured, each image against all the others of its dataset: on Kvasir-SEG (998 colonoscopy
images) the best match of 95 % correlates below 0.66 and 6 reach 0.85, all at 0.9 or more (the
dataset's own duplicates); on 300 Shenzhen chest X-rays none (the highest, 0.82, two patients'
ribs); on the 36 CURVAS CT slices, two neighbouring slices of one patient at 0.99. Kvasir images
moved by 1-3 % of the image (as the frames of ``test_data_splits``) and 10 % brighter or darker
correlate with their source at 0.83-0.92 or more (median 0.9-0.95), at 4-6 % (the shift limit)
at 0.73 or more: a video's frame has several neighbours, one is enough. 128 validation images
against 8 candidates each take about 0.2 s on one CPU core, besides reading them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.ndimage import uniform_filter

from ssam.data.cases import Case, read_case_image
from ssam.data.io import file_suffix

COARSE, DETAIL = 16, 64  # print sizes (pixels per side)
MAX_SHIFT = 4  # detail pixels: up to 6 % of the image
CANDIDATES = 8  # training images per validation image whose detail is compared
NEAR_CORRELATION = 0.85
_JPEG = (".jpg", ".jpeg")


@dataclass(frozen=True)
class Fingerprints:
    """Prints of N images: ``coarse`` (N, 256) and ``detail`` (N, 64, 64), float32."""

    coarse: np.ndarray
    detail: np.ndarray


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows (..., D) less their mean, scaled to unit norm (flat rows stay 0)."""
    centred = vectors - vectors.mean(axis=-1, keepdims=True)
    norm = np.linalg.norm(centred, axis=-1, keepdims=True)
    return centred / np.maximum(norm, 1e-6)


def _resize(grey: np.ndarray, size: int) -> np.ndarray:
    image = Image.fromarray(np.asarray(grey, np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BOX))


def compute_fingerprints(greys: Sequence[np.ndarray]) -> Fingerprints:
    """Prints of (H, W) grey images (any real dtype)."""
    coarse = [_unit(_resize(g, COARSE).ravel()) for g in greys]
    detail = []
    for grey in greys:
        small = _resize(grey, DETAIL)
        detail.append(small - uniform_filter(small, 7, mode="nearest"))
    shape = (len(greys), DETAIL, DETAIL)
    return Fingerprints(
        np.asarray(coarse, np.float32).reshape(len(greys), COARSE * COARSE),
        np.asarray(detail, np.float32).reshape(shape),
    )


def read_grey(case: Case) -> np.ndarray:
    """A 2D case's image as (H, W) float32 grey (channels averaged); JPEGs are decoded at a
    reduced size, which is all a print needs."""
    path = case.image_paths[0]
    if len(case.image_paths) == 1 and file_suffix(path) in _JPEG:
        with Image.open(path) as image:
            image.draft("L", (2 * DETAIL, 2 * DETAIL))
            return np.asarray(image.convert("F"))
    image, _ = read_case_image(case)  # (C, H, W, 1)
    return image[..., 0].astype(np.float32).mean(axis=0)


def _window_sums(images: np.ndarray, side: int) -> np.ndarray:
    """(..., S, S) -> (..., 2r+1, 2r+1): the sums over the side x side windows starting at
    ``MAX_SHIFT + dy, MAX_SHIFT + dx`` for every shift (dy, dx), r = ``MAX_SHIFT``."""
    padded = np.pad(images, [(0, 0)] * (images.ndim - 2) + [(1, 0), (1, 0)])
    total = padded.cumsum(axis=-2).cumsum(axis=-1)
    starts = np.arange(2 * MAX_SHIFT + 1)  # = MAX_SHIFT + dy for dy in -r..r
    ends = starts + side
    return (
        total[..., ends[:, None], ends[None, :]]
        - total[..., starts[:, None], ends[None, :]]
        - total[..., ends[:, None], starts[None, :]]
        + total[..., starts[:, None], starts[None, :]]
    )


def best_detail_match(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(Q,) best correlation of each query's detail print (Q, S, S) with any of its
    candidates (Q, K, S, S): the query's central (S - 2r)^2 window against the candidate's
    window at every shift of up to r = ``MAX_SHIFT`` pixels either way (normalised cross-
    correlation, computed with FFTs: the window never wraps around)."""
    r, size = MAX_SHIFT, queries.shape[-1]
    side, n = size - 2 * r, (size - 2 * r) ** 2
    base = np.zeros_like(queries)
    crop = queries[:, r : r + side, r : r + side].reshape(len(queries), -1)
    base[:, r : r + side, r : r + side] = _unit(crop).reshape(-1, side, side)
    spectrum = np.conj(np.fft.rfft2(base))[:, None] * np.fft.rfft2(candidates)
    product = np.fft.irfft2(spectrum, s=(size, size))  # [.., dy, dx] = sum base * moved
    shifts = np.r_[0 : r + 1, size - r : size]  # 0..r, then -r..-1 as indices
    dots = np.roll(product[..., shifts[:, None], shifts[None, :]], r, axis=(-2, -1))
    sums = _window_sums(candidates, side)
    squares = _window_sums(candidates.astype(np.float64) ** 2, side)
    norms = np.sqrt(np.maximum(squares - sums.astype(np.float64) ** 2 / n, 1e-12))
    return (dots / norms).reshape(len(queries), -1).max(axis=1).astype(np.float32)


def near_duplicate_mask(val: Fingerprints, train: Fingerprints) -> np.ndarray:
    """(V,) whether each validation print has a near-duplicate among the training prints."""
    count = min(CANDIDATES, len(train.coarse))
    found = np.zeros(len(val.coarse), bool)
    for start in range(0, len(found), 128):  # (128, K, 64, 64) at a time: bounded memory
        part = slice(start, start + 128)
        similar = val.coarse[part] @ train.coarse.T  # correlations
        chosen = np.argpartition(-similar, count - 1, axis=1)[:, :count]
        best = best_detail_match(val.detail[part], train.detail[chosen])
        found[part] = best >= NEAR_CORRELATION
    return found


def find_near_duplicates(val: Sequence[Case], train: Sequence[Case]) -> list[Case]:
    """The ``val`` cases whose image, or its mirror image, has a near-duplicate among the
    ``train`` cases' images (all 2D)."""
    if not val or not train:
        return []
    train_prints = compute_fingerprints([read_grey(c) for c in train])
    greys = [read_grey(c) for c in val]
    found = near_duplicate_mask(compute_fingerprints(greys), train_prints)
    mirrored = compute_fingerprints([g[:, ::-1] for g in greys])
    found |= near_duplicate_mask(mirrored, train_prints)
    return [case for case, hit in zip(val, found, strict=True) if hit]
