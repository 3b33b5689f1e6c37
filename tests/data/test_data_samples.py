"""Training samples: negatives, slicing, caching, determinism and multi-dataset sampling."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

import ssam.data.samples as samples_module
from ssam.config.data import AugmentConfig, DatasetConfig, IntensityConfig
from ssam.data.layouts import discover_folder_cases, discover_nnunet_cases, load_cases
from ssam.data.samples import (
    SegmentationSamples,
    build_sample_weights,
    build_samples,
    build_weighted_sampler,
    label_presence,
    label_vocabulary,
    select_sample_refs,
)


def _presence(n_cases=3, n_slices=10):
    labels = np.zeros((8, 8, n_slices), np.uint8)
    labels[2:4, 2:4, 3:5] = 1  # "a" in slices 3, 4
    labels[5:7, 5:7, 4:7] = 2  # "b" in slices 4, 5, 6
    return [label_presence(labels, {"a": 1, "b": 2}, axis=-1) for _ in range(n_cases)]


def test_label_presence_per_slice():
    presence = _presence(1)[0]
    assert presence.labels["a"].nonzero()[0].tolist() == [3, 4]
    assert presence.labels["b"].nonzero()[0].tolist() == [4, 5, 6]
    assert presence.foreground.sum() == 4 and presence.is_volume


def test_neg_ratio_semantics():
    presence = _presence()
    everything = select_sample_refs(presence, neg_ratio=None)
    positives = [r for r in everything if r.positive]
    assert len(everything) == 3 * 10 * 2 and len(positives) == 3 * 5
    assert not [r for r in select_sample_refs(presence, neg_ratio=0.0) if not r.positive]
    one = select_sample_refs(presence, neg_ratio=1.0, seed=1)
    assert Counter(r.positive for r in one) == {True: 15, False: 15}
    assert select_sample_refs(presence, neg_ratio=1.0, seed=1) == one
    assert select_sample_refs(presence, neg_ratio=1.0, seed=2) != one
    keys = [(r.case_index, r.slice_index) for r in one]
    assert keys == sorted(keys)  # (case, slice, label) order
    hard = select_sample_refs(presence, neg_ratio=None, drop_background_slices=True)
    negatives = [r for r in hard if not r.positive]
    assert {r.slice_index for r in negatives} == {3, 5, 6}  # only slices with another label


def test_real_2d_label_maps_give_positive_and_negative_samples(shared_data_dir):
    cases = discover_nnunet_cases(shared_data_dir / "curvas-ct")[:4]
    dataset = SegmentationSamples(cases, 64, neg_ratio=None)
    assert len(dataset) == 4 * 3 and dataset.label_names == ["liver", "kidney", "pancreas"]
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
        assert sample["mask"].shape == (64, 64) and sample["mask"].dtype == torch.float32
        assert set(sample["mask"].unique().tolist()) <= {0.0, 1.0}
        if not sample["positive"]:
            assert sample["mask"].sum() == 0
        elif sample["label"] == "liver":
            assert sample["mask"].sum() > 0
    assert {dataset[i]["positive"] for i in range(len(dataset))} == {True, False}


def test_volume_slices_along_the_chosen_axis_and_are_cached(shared_data_dir, monkeypatch):
    cases = discover_nnunet_cases(shared_data_dir / "ms-lesions-mri", channels=["FLAIR"])[:1]
    # S = 256 upsamples the 182 x 218 slices: nearest resizing keeps every small lesion.
    axial = SegmentationSamples(cases, 256, intensity=IntensityConfig(preset="mri"), neg_ratio=0.0)
    sagittal = SegmentationSamples(cases, 256, slice_axis=0, neg_ratio=0.0)
    assert {r.slice_index for r in axial.refs} < set(range(182))
    assert all(r.positive for r in axial.refs) and len(axial) != len(sagittal)
    reads = Counter()
    original = samples_module.read_case_image

    def counting(case):
        reads[case.case_id] += 1
        return original(case)

    monkeypatch.setattr(samples_module, "read_case_image", counting)
    for index in range(0, len(axial), max(1, len(axial) // 8)):
        sample = axial[index]
        assert sample["mask"].sum() > 0 and sample["image"].shape == (3, 256, 256)
    assert reads == {"patient07": 1}


def test_default_intensity_maps_a_raw_volume_by_its_percentiles(shared_data_dir):
    # Raw MRI (float, not 0-255): "auto" must not clip it to 0-255 as "rgb" would.
    cases = discover_nnunet_cases(shared_data_dir / "ms-lesions-mri", channels=["FLAIR"])[:1]
    auto = SegmentationSamples(cases, 64, neg_ratio=0.0)
    mri = SegmentationSamples(cases, 64, intensity=IntensityConfig(preset="mri"), neg_ratio=0.0)
    rgb = SegmentationSamples(cases, 64, intensity=IntensityConfig(preset="rgb"), neg_ratio=0.0)
    index = len(auto) // 2
    assert torch.equal(auto[index]["image"], mri[index]["image"])
    assert not torch.equal(auto[index]["image"], rgb[index]["image"])


def test_same_seed_same_samples_and_epoch_changes_augmentation(tmp_path, make_nnunet_3d):
    cases = discover_nnunet_cases(make_nnunet_3d(tmp_path / "ds", n=2))
    kwargs = dict(
        augment=AugmentConfig(hflip=True), intensity=IntensityConfig(preset="minmax"), seed=5
    )
    first, second = (
        SegmentationSamples(cases, 32, **kwargs),
        SegmentationSamples(cases, 32, **kwargs),
    )
    assert first.refs == second.refs
    first.set_epoch(3)
    a, b = first[2], second[(2, 3)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(first[(2, 4)]["image"], a["image"])
    assert first[0]["image"].shape == (3, 32, 32)  # two channels -> three


def test_dataloader_collates_samples(tmp_path, make_folder_dataset):
    cases = discover_folder_cases(make_folder_dataset(tmp_path / "ds", n=4), "polyp")
    dataset = SegmentationSamples(cases, 32)
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 32, 32)
    assert batch["label"] == ["polyp"] * 4 and batch["positive"].all()


def test_weighted_sampling_across_datasets(tmp_path, make_folder_dataset, make_nnunet_2d):
    polyp_config = DatasetConfig(
        path=make_folder_dataset(tmp_path / "p", n=2), layout="folder", label="polyp"
    )
    ct_config = DatasetConfig(
        path=make_nnunet_2d(tmp_path / "ct", n=4), layout="nnunet", weight=3.0
    )
    datasets = [
        build_samples(c, load_cases(c), 32, train=True, normalisation="sam")
        for c in (polyp_config, ct_config)
    ]
    assert label_vocabulary(datasets) == ["kidney", "liver", "polyp"]
    weights = build_sample_weights([len(d) for d in datasets], [1.0, 3.0])
    assert weights.shape == (sum(len(d) for d in datasets),)
    assert weights[: len(datasets[0])].sum().item() == pytest.approx(0.25)
    assert weights.sum().item() == pytest.approx(1.0)
    sampler = build_weighted_sampler(datasets, [1.0, 3.0], seed=1, epoch=2, num_samples=4000)
    order = list(sampler)
    assert order == list(
        build_weighted_sampler(datasets, [1.0, 3.0], seed=1, epoch=2, num_samples=4000)
    )
    assert order != list(
        build_weighted_sampler(datasets, [1.0, 3.0], seed=1, epoch=3, num_samples=4000)
    )
    share = np.mean([i < len(datasets[0]) for i in order])
    assert 0.2 < share < 0.3
    combined = ConcatDataset(datasets)
    assert combined[order[0]]["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="weights"):
        build_sample_weights([1, 2], [1.0])
