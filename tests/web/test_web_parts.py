"""The web app's pure parts: the embedding LRU's byte budget, run-length codes, sniffing,
the viewer's image kept compactly."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch

from ssam.web.cache import EmbeddingCache
from ssam.web.encoding import (
    compact_intensities,
    decode_label_map_rle,
    decode_mask_rle,
    encode_label_map_rle,
    encode_mask_rle,
)
from ssam.web.uploads import sniff_format


def test_cache_evicts_least_recently_used_within_its_budget():
    cache = EmbeddingCache(budget=3000)
    for key in "abc":
        cache.put(key, torch.zeros(250), 1000)  # 3 x 1000 bytes: full
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("d", torch.zeros(250), 1000)
    assert cache.get("b") is None and cache.get("a") is not None
    stats = cache.stats()
    assert stats.entries == 3 and stats.bytes == 3000 and stats.hits == 2 and stats.misses == 1
    cache.put("huge", torch.zeros(1000), 4000)  # larger than the budget: not stored
    assert cache.get("huge") is None and cache.stats().bytes == 3000
    cache.put("a", torch.zeros(500), 2000)  # replacing re-charges
    assert cache.stats().bytes <= 3000
    assert EmbeddingCache(0).get("x") is None


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 2), (1, 1), (0, 3)])
def test_run_length_codes_round_trip(shape):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, shape).astype(np.uint8)
    code = encode_label_map_rle(labels)
    np.testing.assert_array_equal(decode_label_map_rle(code), labels)
    assert sum(code["lengths"]) == labels.size
    for mask in (labels > 0, np.ones(shape, bool), np.zeros(shape, bool)):
        code = encode_mask_rle(mask)
        np.testing.assert_array_equal(decode_mask_rle(code), mask)
        assert sum(code["counts"]) == mask.size


def test_mask_code_starts_with_background():
    assert encode_mask_rle(np.array([True, True, False]))["counts"] == [0, 2, 1]
    assert encode_mask_rle(np.array([[False, True], [True, True]]))["counts"] == [1, 3]


def test_sniffing_reads_content_not_names(tmp_path):
    nifti = nib.Nifti1Image(np.zeros((4, 4, 2), np.uint8), np.eye(4))
    raw = nifti.to_bytes()
    assert sniff_format(raw[:1024]) == "nifti"
    assert sniff_format(gzip.compress(raw)[:4096]) == "nifti-gz"
    assert sniff_format(b"\x89PNG\r\n\x1a\n" + bytes(20)) == "png"
    assert sniff_format(b"\xff\xd8\xff\xe0" + bytes(20)) == "jpeg"
    assert sniff_format(bytes(128) + b"DICM" + bytes(20)) == "dicom"
    assert sniff_format(gzip.compress(b"not a volume" * 100)) is None
    assert sniff_format(b"GIF89a" + bytes(400)) is None
    assert sniff_format(b"") is None


@pytest.mark.parametrize(
    ("values", "kept"),
    [
        (np.array([[-1024.0, 0.0], [3071.0, 40.0]], np.float32), False),  # whole HU: int16
        (np.array([[0.5, 1.0]], np.float32), True),  # fractions stay
        (np.array([[0.0, 40000.0]], np.float32), True),  # beyond int16 stays
        (np.array([[np.nan, 1.0]], np.float32), True),
        (np.array([[3, 4]], np.uint16), True),  # integers are already exact
    ],
)
def test_viewer_images_are_kept_as_int16_only_when_exact(values, kept):
    compact = compact_intensities(values)
    assert (compact is values) == kept
    np.testing.assert_array_equal(compact, values)
    if not kept:
        assert compact.dtype == np.int16
