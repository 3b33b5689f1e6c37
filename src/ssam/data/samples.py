"""Training samples (image, label name, binary mask) for every label of every image or slice.

What a sample is: one 2D image, or one slice of a volume along ``slice_axis`` (default
-1: the NIfTI array's last axis, axial for RAS-like volumes; 2D images, being volumes of
depth one, are always taken along their depth axis), paired with one label name of its
dataset. The pair is *positive* if the label occurs in that image/slice, else *negative*
(an empty target, so the model learns to answer "not here").

neg_ratio: all positive pairs are kept; of the negative pairs at most
``floor(neg_ratio * n_positive)`` are kept (per dataset), chosen without replacement by a
generator seeded from ``seed``, so the choice is fixed for the run; None keeps all
negatives, 0 keeps none. ``drop_background_slices`` (volumes only): slices whose label
map is all background give no negatives at all; negatives then come only from slices
that hold some other label. Samples are ordered by (case, slice, label).

Determinism: the index is a pure function of the cases and ``seed``; the augmentation of
sample ``i`` in epoch ``e`` uses `augmentation_rng(seed, e, i)` (never a global RNG), so
the same seed, epoch and index give bit-identical tensors. Call `set_epoch` before each
epoch (or index with ``dataset[(i, epoch)]``, which also works with persistent workers).
Volumes are kept in a small LRU cache (``cache_size`` cases per process/worker) so that
slice sampling does not decompress a .nii.gz per sample.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from ssam.config.data import AugmentConfig, DatasetConfig, IntensityConfig
from ssam.data.cases import Case, read_case_image, read_case_labels
from ssam.data.properties import normalize_axis, take_slice
from ssam.data.transforms import (
    augmentation_rng,
    compute_intensity_range,
    preprocess_pair,
    resolve_intensity,
    scale_intensity,
)
from ssam.errors import DataError

_NEGATIVE_STREAM, _SAMPLER_STREAM = 3, 4  # keep seeded streams apart


class Sample(TypedDict):
    """One training sample; collated by the default collate function."""

    image: torch.Tensor  # (3, S, S) float32, SAM-normalised, zero-padded bottom/right
    mask: torch.Tensor  # (S, S) float32 in {0, 1}
    label: str
    case_id: str
    dataset: str
    slice_index: int
    positive: bool  # label present at the original resolution (tiny ones may vanish at S)


@dataclass(frozen=True)
class SampleRef:
    """Where a sample comes from: case (index into the dataset's cases), slice, label."""

    case_index: int
    slice_index: int
    label: str
    positive: bool


@dataclass(frozen=True)
class CasePresence:
    """Per-slice occurrence of each label, and of any foreground, in one case."""

    labels: dict[str, np.ndarray]  # name -> (n_slices,) bool
    foreground: np.ndarray  # (n_slices,) bool: any non-zero value
    is_volume: bool


def label_presence(labels: np.ndarray, values: Mapping[str, int], axis: int) -> CasePresence:
    """Which labels occur in which slice of an (I, J, K) label map, slicing along `axis`."""
    dim = normalize_axis(axis)
    other = tuple(d for d in range(3) if d != dim)
    return CasePresence(
        labels={name: np.any(labels == value, axis=other) for name, value in values.items()},
        foreground=np.any(labels != 0, axis=other),
        is_volume=labels.shape[2] > 1,
    )


def select_sample_refs(
    presence: Sequence[CasePresence],
    neg_ratio: float | None,
    drop_background_slices: bool = False,
    seed: int = 0,
) -> list[SampleRef]:
    """All positive (case, slice, label) pairs plus a seeded subset of the negatives.

    See the module docstring for the semantics of ``neg_ratio`` and
    ``drop_background_slices``. Returns refs in (case, slice, label) order.
    """
    positives: list[tuple[int, SampleRef]] = []
    negatives: list[tuple[int, SampleRef]] = []
    for case_index, case in enumerate(presence):
        for slice_index in range(len(case.foreground)):
            background = not case.foreground[slice_index]
            for name, present in case.labels.items():
                ref = SampleRef(case_index, slice_index, name, bool(present[slice_index]))
                if ref.positive:
                    positives.append((len(positives) + len(negatives), ref))
                elif not (drop_background_slices and case.is_volume and background):
                    negatives.append((len(positives) + len(negatives), ref))
    if neg_ratio is not None:
        keep = min(len(negatives), math.floor(neg_ratio * len(positives)))
        rng = np.random.default_rng(np.random.SeedSequence([seed, _NEGATIVE_STREAM]))
        chosen = rng.choice(len(negatives), size=keep, replace=False) if keep else []
        negatives = [negatives[i] for i in sorted(chosen)]
    return [ref for _, ref in sorted(positives + negatives, key=lambda item: item[0])]


@dataclass(frozen=True)
class _CaseData:
    image: np.ndarray  # (C, I, J, K) stored dtype
    labels: np.ndarray  # (I, J, K)
    intensity: IntensityConfig  # resolved (never "auto")
    value_range: tuple[np.ndarray, np.ndarray] | None


class SegmentationSamples(Dataset):
    """Torch dataset of `Sample` for one dataset's cases (see the module docstring).

    Args:
        cases: validated cases with label maps (`ssam.data.layouts.load_cases`).
        input_size: S, the square model input.
        intensity: 0-255 mapping ("auto" resolved per case); its range is computed once per
            case (whole volume).
        augment: training augmentation, or None (validation).
        slice_axis: spatial axis (-3..2) along which volumes are sliced.
        neg_ratio, drop_background_slices: which negative pairs to keep.
        seed: seeds the negative choice and the augmentation.
        cache_size: cases kept decoded in memory (LRU).
        normalisation: pixel normalisation of the base model (``SSAM.normalisation``).
    """

    def __init__(
        self,
        cases: Sequence[Case],
        input_size: int,
        *,
        intensity: IntensityConfig | None = None,
        augment: AugmentConfig | None = None,
        slice_axis: int = -1,
        neg_ratio: float | None = 1.0,
        drop_background_slices: bool = False,
        seed: int = 0,
        cache_size: int = 4,
        normalisation: str = "sam",
    ) -> None:
        if input_size <= 0 or cache_size < 1:
            raise ValueError(
                f"input_size and cache_size must be positive, got {input_size}, {cache_size}"
            )
        self.cases = list(cases)
        self.input_size = input_size
        self.normalisation = normalisation
        self.intensity = intensity or IntensityConfig()
        self.augment = augment
        self.slice_axis = normalize_axis(slice_axis)
        self.seed = seed
        self.epoch = 0
        self.cache_size = cache_size
        self._cache: OrderedDict[int, _CaseData] = OrderedDict()
        presence, self._axes = [], []
        for case in self.cases:
            labels, props = read_case_labels(case)
            self._axes.append(2 if props.is_2d else self.slice_axis)
            presence.append(label_presence(labels, case.labels, self._axes[-1]))
        self.refs = select_sample_refs(presence, neg_ratio, drop_background_slices, seed)
        if not self.refs:
            names = sorted({c.dataset for c in self.cases}) or ["(no cases)"]
            raise DataError(f"dataset {', '.join(names)}: no samples (no label occurs in any case)")

    @property
    def label_names(self) -> list[str]:
        """Label names of this dataset, in first-seen order."""
        return list(dict.fromkeys(name for case in self.cases for name in case.labels))

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of this epoch (as DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.refs)

    def _load(self, case_index: int) -> _CaseData:
        data = self._cache.get(case_index)
        if data is not None:
            self._cache.move_to_end(case_index)
            return data
        case = self.cases[case_index]
        image, image_props = read_case_image(case)
        labels, _ = read_case_labels(case)
        if image.shape[1:] != labels.shape:
            raise DataError(
                f"{case.label_path}: shape {labels.shape} differs from image {image_props.path} {image.shape[1:]}"
            )
        intensity = resolve_intensity(self.intensity, image, image_props.is_2d)
        data = _CaseData(image, labels, intensity, compute_intensity_range(image, intensity))
        self._cache[case_index] = data
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return data

    def __getitem__(self, key: int | tuple[int, int]) -> Sample:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        ref = self.refs[index]
        case = self.cases[ref.case_index]
        data = self._load(ref.case_index)
        axis = self._axes[ref.case_index]
        pixels = scale_intensity(
            take_slice(data.image, axis, ref.slice_index), data.intensity, data.value_range
        )
        mask = take_slice(data.labels, axis, ref.slice_index) == case.labels[ref.label]
        rng = None if self.augment is None else augmentation_rng(self.seed, epoch, index)
        image, target, _ = preprocess_pair(
            pixels, mask, self.input_size, self.augment, rng, self.normalisation
        )
        return Sample(
            image=image,
            mask=target,  # type: ignore[typeddict-item]
            label=ref.label,
            case_id=case.case_id,
            dataset=case.dataset,
            slice_index=ref.slice_index,
            positive=ref.positive,
        )


def build_samples(
    config: DatasetConfig,
    cases: Sequence[Case],
    input_size: int,
    *,
    train: bool,
    normalisation: str,
    seed: int = 0,
) -> SegmentationSamples:
    """`SegmentationSamples` of one configured dataset for a base normalising pixels by
    ``normalisation``; augmentation only when ``train``."""
    return SegmentationSamples(
        cases,
        input_size,
        normalisation=normalisation,
        intensity=config.intensity,
        augment=config.augment if train else None,
        slice_axis=config.slice_axis,
        neg_ratio=config.neg_ratio,
        drop_background_slices=config.drop_background_slices,
        seed=seed,
    )


def label_vocabulary(datasets: Iterable[SegmentationSamples]) -> list[str]:
    """Sorted union of the label names of several datasets (the shared prompt vocabulary)."""
    return sorted({name for dataset in datasets for name in dataset.label_names})


def build_sample_weights(lengths: Sequence[int], weights: Sequence[float]) -> torch.Tensor:
    """Per-sample weights for datasets concatenated in order (torch ConcatDataset).

    Dataset d gets total probability weights[d] / sum(weights of non-empty datasets),
    spread evenly over its lengths[d] samples.

    Returns:
        (sum(lengths),) float64, summing to 1.
    """
    if len(lengths) != len(weights):
        raise ValueError(f"{len(lengths)} datasets but {len(weights)} weights")
    if any(w < 0 for w in weights) or any(n < 0 for n in lengths):
        raise ValueError(f"weights and lengths must be non-negative, got {weights}, {lengths}")
    total = sum(w for w, n in zip(weights, lengths, strict=True) if n > 0)
    if total <= 0:
        raise ValueError(f"no dataset has both samples and a positive weight: {lengths}, {weights}")
    parts = [
        torch.full((n,), w / total / n, dtype=torch.float64)
        for n, w in zip(lengths, weights, strict=True)
        if n
    ]
    return torch.cat(parts)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A torch generator that depends only on (seed, epoch): same order on resume."""
    state = np.random.SeedSequence([seed, _SAMPLER_STREAM, epoch]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def build_weighted_sampler(
    datasets: Sequence[Sized],
    weights: Sequence[float],
    *,
    seed: int,
    epoch: int,
    num_samples: int | None = None,
) -> WeightedRandomSampler:
    """Sampler over ConcatDataset(datasets) drawing dataset d with probability ~ weights[d].

    Build a new one per epoch: its draws depend only on (seed, epoch). ``num_samples``
    defaults to the total number of samples; drawn with replacement.
    """
    sample_weights = build_sample_weights([len(d) for d in datasets], weights)
    return WeightedRandomSampler(
        sample_weights,
        num_samples=num_samples or len(sample_weights),
        replacement=True,
        generator=epoch_generator(seed, epoch),
    )
