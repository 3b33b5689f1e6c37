"""Assemble the training and validation samples of every configured dataset."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch.utils.data import ConcatDataset

from ssam.config.train import TrainConfig
from ssam.data.cases import Case, read_case_image
from ssam.data.intensity_check import sample_values, summarise_training_values
from ssam.data.layouts import load_cases
from ssam.data.samples import SegmentationSamples, build_samples, label_vocabulary
from ssam.data.splits import DatasetSplit, split_dataset
from ssam.errors import DataError
from ssam.sam.families import get_family


@dataclass
class TrainingData:
    """Per-dataset training and validation samples, in config order, and the label vocabulary."""

    train: list[SegmentationSamples]
    val: list[SegmentationSamples]
    weights: list[float]
    vocabulary: list[str]
    val_cases: dict[str, list[Case]]
    splits: dict[str, DatasetSplit]
    input_stats: dict

    @property
    def train_set(self) -> ConcatDataset:
        return ConcatDataset(self.train)

    @property
    def val_set(self) -> ConcatDataset | None:
        return ConcatDataset(self.val) if self.val else None


def _check_disjoint(name: str, train: list[Case], val: list[Case]) -> None:
    overlap = {c.case_id for c in train} & {c.case_id for c in val}
    if overlap:
        raise DataError(
            f"dataset {name}: cases in both train and validation: {sorted(overlap)[:5]}"
        )


def build_training_data(config: TrainConfig) -> TrainingData:
    """Read, validate and split every dataset (by case), before any training starts.

    Raises DataError naming the dataset, file or label at fault.
    """
    size, seed = config.model.image_size, config.seed
    norm = get_family(config.model.variant).normalisation
    train, val, weights, val_cases, splits = [], [], [], {}, {}
    sampled = partial(build_samples, normalisation=norm, seed=seed)
    for dataset in config.datasets:
        cases = load_cases(dataset)
        if not cases:
            raise DataError(f"dataset {dataset.dataset_name} ({dataset.path}): no usable cases")
        split = split_dataset(cases, dataset.split, dataset.path, name=dataset.dataset_name)
        splits[dataset.dataset_name] = split
        _check_disjoint(dataset.dataset_name, split.train, split.val)
        if not split.train:
            raise DataError(f"dataset {dataset.dataset_name}: the split leaves no training case")
        # stored embeddings are of the images as they are: no augmentation then
        train.append(sampled(dataset, split.train, size, train=not config.embeddings_cached))
        weights.append(dataset.weight)
        if split.val:
            val.append(sampled(dataset, split.val, size, train=False))
            val_cases[dataset.dataset_name] = list(split.val)
    presets = {d.intensity.preset for d in config.datasets}
    stats = summarise_training_values(
        _sample_training_values(splits), presets.pop() if len(presets) == 1 else None
    )
    return TrainingData(train, val, weights, label_vocabulary(train), val_cases, splits, stats)


def _sample_training_values(splits: dict[str, DatasetSplit], per_dataset: int = 16):
    """(dtype, samples) of up to ``per_dataset`` training images of each dataset, evenly
    spread over its cases: what ``input_stats`` summarises."""
    for split in splits.values():
        cases = split.train[:: max(1, len(split.train) // per_dataset)][:per_dataset]
        for case in cases:
            image, _ = read_case_image(case)
            yield str(image.dtype), sample_values(image, 20_000)
