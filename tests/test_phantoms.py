import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ssam.demo.phantoms import (
    ABDOMEN_STRUCTURES,
    PRETRAIN_STRUCTURES,
    generate_phantom,
    label_mapping,
    window_ct,
    write_phantom_dataset,
)


@pytest.fixture(scope="module")
def phantoms():
    return [generate_phantom(seed, size=96) for seed in range(12)]


def test_generate_is_deterministic_and_seed_dependent():
    a, b, c = generate_phantom(3), generate_phantom(3), generate_phantom(4)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == a.labels.shape == (128, 128)
    assert a.image.dtype == np.int16 and a.labels.dtype == np.uint8
    assert a.label_names == {"background": 0, "liver": 1, "kidney": 2, "spleen": 3, "lesion": 4}


def test_every_structure_present_in_most_cases(phantoms):
    for name, value in phantoms[0].label_names.items():
        present = np.mean([(p.labels == value).any() for p in phantoms])
        assert present >= (0.7 if name == "lesion" else 1.0), name
    # both kidneys: two separate components
    for p in phantoms:
        _, n = ndimage.label(p.labels == p.label_names["kidney"], structure=np.ones((3, 3)))
        assert n == 2


def test_lesion_lies_inside_the_liver(phantoms):
    with_lesion = 0
    for p in phantoms:
        lesion = p.labels == p.label_names["lesion"]
        if not lesion.any():
            continue
        with_lesion += 1
        liver_or_lesion = lesion | (p.labels == p.label_names["liver"])
        ring = ndimage.binary_dilation(lesion, structure=np.ones((3, 3)))
        assert liver_or_lesion[ring].all()  # every neighbour of the lesion is liver
    assert with_lesion >= 8


def test_structures_are_separable_but_not_trivial(phantoms):
    hu = {n: [] for n in ("liver", "kidney", "spleen", "lesion")}
    for p in phantoms:
        for name in hu:
            mask = p.labels == p.label_names[name]
            if mask.any():
                hu[name].append(p.image[mask].mean())
    lesion_contrast = [
        p.image[p.labels == 1].mean() - p.image[p.labels == 4].mean()
        for p in phantoms
        if (p.labels == 4).any()
    ]
    assert min(lesion_contrast) > 30  # hypodense and visible through the noise ...
    assert np.mean(hu["kidney"]) > np.mean(hu["liver"]) + 30
    noise = [p.image[p.labels == 1].std() for p in phantoms]
    assert min(noise) > 5  # ... but noisy and textured
    assert generate_phantom(0).image[0, 0] < -900  # air in the corner


def test_structures_choose_labels_not_the_image():
    abdomen = generate_phantom(5, size=64)
    pretrain = generate_phantom(5, size=64, structures=PRETRAIN_STRUCTURES)
    assert np.array_equal(abdomen.image, pretrain.image)
    assert pretrain.label_names == {"background": 0, "body": 1, "spine": 2, "aorta": 3}
    assert set(np.unique(pretrain.labels)) == {0, 1, 2, 3}
    # without a "lesion" label the liver covers the lesion
    liver_only = generate_phantom(5, size=64, structures=("liver",))
    lesion_and_liver = np.isin(abdomen.labels, (1, 4))
    assert np.array_equal(liver_only.labels == 1, lesion_and_liver)


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="stomach"):
        label_mapping(("liver", "stomach"))
    with pytest.raises(ValueError, match="distinct"):
        label_mapping(("liver", "liver"))
    with pytest.raises(ValueError, match="size"):
        generate_phantom(0, size=32)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        write_phantom_dataset(tmp_path, 1, seed=0, size=64)


def test_window_ct():
    hu = np.array([-1000, -160, 40, 240, 3000])
    assert window_ct(hu).tolist() == [0, 0, 128, 255, 255]


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_dataset_layout_and_determinism(tmp_path):
    root = write_phantom_dataset(tmp_path / "a", n_cases=4, seed=11, size=64, n_test=2)
    again = write_phantom_dataset(tmp_path / "b", n_cases=4, seed=11, size=64, n_test=2)
    other = write_phantom_dataset(tmp_path / "c", n_cases=4, seed=12, size=64, n_test=2)
    files = _files(root)
    assert files == _files(again)
    other_files = _files(other)
    assert files["imagesTr/phantom_000_0000.png"] != other_files["imagesTr/phantom_000_0000.png"]
    assert sorted(files) == sorted(
        ["dataset.json"]
        + [f"imagesTr/phantom_{i:03d}_0000.png" for i in range(4)]
        + [f"labelsTr/phantom_{i:03d}.png" for i in range(4)]
        + [f"imagesTs/phantom_{i:03d}_0000.png" for i in (4, 5)]
        + [f"labelsTs/phantom_{i:03d}.png" for i in (4, 5)]
    )
    dataset = json.loads(files["dataset.json"])
    assert dataset["labels"] == label_mapping(ABDOMEN_STRUCTURES)
    assert dataset["channel_names"] == {"0": "CT"}
    assert dataset["numTraining"] == 4 and dataset["file_ending"] == ".png"


def test_dataset_files_readable_with_pil(tmp_path):
    root = write_phantom_dataset(
        tmp_path, n_cases=3, seed=2, size=64, structures=PRETRAIN_STRUCTURES
    )
    dataset = json.loads((root / "dataset.json").read_text())
    for i in range(3):
        with Image.open(root / "imagesTr" / f"phantom_{i:03d}_0000.png") as im:
            assert im.mode == "L" and im.size == (64, 64)
            image = np.asarray(im)
        with Image.open(root / "labelsTr" / f"phantom_{i:03d}.png") as im:
            labels = np.asarray(im)
        assert labels.dtype == np.uint8 and labels.shape == image.shape
        assert set(np.unique(labels)) == set(dataset["labels"].values())
        expected = generate_phantom(np.random.default_rng([2, i]), 64, PRETRAIN_STRUCTURES)
        assert np.array_equal(labels, expected.labels)
        assert np.array_equal(image, window_ct(expected.image))
