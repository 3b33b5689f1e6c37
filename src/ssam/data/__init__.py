"""Data layer: reading images and label maps, dataset layouts, splits, transforms, samples."""

from ssam.data.cases import BadCaseWarning, Case, check_case, validate_cases
from ssam.data.io import (
    ImageProperties,
    binarize_mask,
    read_header,
    read_image,
    read_mask,
    take_slice,
    write_label_map,
)
from ssam.data.layouts import discover_folder_cases, discover_nnunet_cases, load_cases
from ssam.data.samples import (
    SegmentationSamples,
    build_sample_weights,
    build_samples,
    build_weighted_sampler,
    label_vocabulary,
)
from ssam.data.splits import DatasetSplit, split_dataset
from ssam.data.transforms import PreprocessInfo, preprocess_image, restore_to_original

__all__ = [
    "BadCaseWarning",
    "Case",
    "DatasetSplit",
    "ImageProperties",
    "PreprocessInfo",
    "SegmentationSamples",
    "binarize_mask",
    "build_sample_weights",
    "build_samples",
    "build_weighted_sampler",
    "check_case",
    "discover_folder_cases",
    "discover_nnunet_cases",
    "label_vocabulary",
    "load_cases",
    "preprocess_image",
    "read_header",
    "read_image",
    "read_mask",
    "restore_to_original",
    "split_dataset",
    "take_slice",
    "validate_cases",
    "write_label_map",
]
