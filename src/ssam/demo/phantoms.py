"""Seeded procedural CT-like abdominal phantoms, and an nnU-Net v2 dataset writer for them.

A phantom is one axial slice at kidney level, in radiological convention (patient's right
on the image left, anterior at the top): air, a body ellipse with subcutaneous fat and a
muscle wall, mesenteric fat and bowel loops (some with gas), paraspinal muscles, a vertebra
(cortex, marrow, canal, posterior arch), aorta and IVC, two kidneys (cortex, medulla, sinus
fat), spleen, and a liver with bright vessels and, in most cases, a hypodense lesion inside
it. Shapes are ellipses with random Fourier-perturbed outlines plus a smooth random warp;
position, size, intensity contrast, texture and noise vary per case.

Every slice contains the same anatomy; ``structures`` only chooses what is labelled, so one
can pre-train on ``PRETRAIN_STRUCTURES`` and adapt on ``ABDOMEN_STRUCTURES``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

__all__ = [
    "ABDOMEN_STRUCTURES",
    "PRETRAIN_STRUCTURES",
    "STRUCTURES",
    "Phantom",
    "generate_phantom",
    "label_mapping",
    "window_ct",
    "write_phantom_dataset",
]

# Labelled structures, in painting precedence (later ones win where they overlap).
STRUCTURES: tuple[str, ...] = ("body", "liver", "spleen", "kidney", "aorta", "spine", "lesion")
ABDOMEN_STRUCTURES: tuple[str, ...] = ("liver", "kidney", "spleen", "lesion")
PRETRAIN_STRUCTURES: tuple[str, ...] = ("body", "spine", "aorta")

# Tissue codes of the internal anatomy map, with mean HU and per-case / texture spread.
AIR, FAT, MUSCLE, VISCERA, BOWEL, GAS, IVC, LIVER, VESSEL = range(9)
SPLEEN, CORTEX, MEDULLA, AORTA, BONE, MARROW, CANAL, LESION, TABLE = range(9, 18)
_HU = np.array(
    [-1000, -100, 50, 0, 35, -850, 125, 100, 165, 115, 200, 150, 200, 750, 230, 15, 60, 250]
)
_HU_CASE_SD = np.array([0, 10, 8, 0, 10, 40, 15, 12, 20, 12, 20, 15, 30, 120, 40, 5, 0, 20])
_TEXTURE_SD = np.array([4, 12, 8, 0, 18, 40, 5, 7, 6, 7, 8, 8, 5, 60, 35, 4, 10, 10])
_TISSUES_OF: dict[str, tuple[int, ...]] = {
    "body": tuple(range(FAT, TABLE)),
    "liver": (LIVER, VESSEL, LESION),
    "spleen": (SPLEEN,),
    "kidney": (CORTEX, MEDULLA),
    "aorta": (AORTA,),
    "spine": (BONE, MARROW),
    "lesion": (LESION,),
}
LESION_PROBABILITY = 0.85
# |lesion - liver| in HU, uniform: a hypodense metastasis against enhanced liver, clearly
# visible through the phantom's noise (a reader would not miss it either).
LESION_CONTRAST_HU = (50.0, 90.0)
LESION_HYPODENSE = 1.0  # probability that the lesion is darker than the liver
LESION_RADIUS_FOV = (0.07, 0.12)  # radius range, fraction of the field of view (log-uniform)


@dataclass(frozen=True)
class Phantom:
    """One phantom slice.

    Attributes:
        image: ``(H, W)`` int16 Hounsfield-like units, air -1000, bone up to ~1000.
        labels: ``(H, W)`` uint8 label map, values from ``label_names``.
        label_names: name -> value, ``"background": 0`` first, then ``structures`` in order.
    """

    image: np.ndarray
    labels: np.ndarray
    label_names: dict[str, int]


def label_mapping(structures: Sequence[str] = ABDOMEN_STRUCTURES) -> dict[str, int]:
    """``{"background": 0, structures[0]: 1, ...}``; raises ValueError on unknown or repeated
    names (known: ``STRUCTURES``)."""
    unknown = [s for s in structures if s not in STRUCTURES]
    if unknown or not structures or len(set(structures)) != len(structures):
        raise ValueError(
            f"structures must be distinct names from {STRUCTURES}, got {tuple(structures)}"
        )
    return {"background": 0, **{name: i + 1 for i, name in enumerate(structures)}}


def _blob(shape, center, radii, angle, rng, roughness=0.1) -> np.ndarray:
    """Ellipse (radii ``(ry, rx)`` px, rotated by ``angle`` rad) with a Fourier-perturbed
    outline: r(theta) = 1 + sum_k a_k cos(k theta + phi_k), k = 2..5, |a_k| ~ roughness / k."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    dy, dx = yy - center[0], xx - center[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = (c * dx + s * dy) / max(radii[1], 0.5), (-s * dx + c * dy) / max(radii[0], 0.5)
    theta = np.arctan2(v, u)
    outline = np.ones_like(theta)
    for k in range(2, 6):
        outline += (
            rng.uniform(-1, 1) * roughness / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        )
    return np.hypot(u, v) <= outline


def _smooth_noise(shape, sigma, rng) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / max(field.std(), 1e-12)


def _paint_body(tissue: np.ndarray, rng: np.random.Generator, size: int):
    """Body outline, fat, muscle wall; returns the body frame and the abdominal cavity."""
    cy, cx = size * rng.uniform(0.47, 0.53), size * rng.uniform(0.47, 0.53)
    a, b = size / 2 * rng.uniform(0.78, 0.92), size / 2 * rng.uniform(0.56, 0.70)
    body = _blob(tissue.shape, (cy, cx), (b, a), rng.uniform(-0.05, 0.05), rng, 0.05)
    body &= np.arange(size)[:, None] < cy + 0.95 * b  # flat back, lying on the table
    depth = ndimage.distance_transform_edt(body)
    fat, wall = b * rng.uniform(0.05, 0.16), b * rng.uniform(0.04, 0.07)
    tissue[body] = FAT
    tissue[body & (depth > fat)] = MUSCLE
    cavity = body & (depth > fat + wall)
    tissue[cavity] = VISCERA

    def place(u, v):  # body-normalised coordinates -> pixel (y, x)
        return cy + v * b, cx + u * a

    return place, b, cavity


def _organ_maker(shape, rng, place, b, jitter_sd):
    """``blob(u, v, ry, rx, angle, roughness)``: a blob centred at body-normalised ``(u, v)``
    (plus Gaussian jitter of ``jitter_sd``) with radii ``(ry, rx)`` in units of ``b``."""

    def blob(u, v, ry, rx, angle=0.0, roughness=0.08):
        du, dv = rng.normal(0, jitter_sd, 2)
        return _blob(shape, place(u + du, v + dv), (ry * b, rx * b), angle, rng, roughness)

    return blob


def _paint_retroperitoneum(tissue, rng, place, b, cavity) -> None:
    """Paraspinal muscles, vertebra, aorta, IVC and kidneys (posterior half)."""
    blob = _organ_maker(tissue.shape, rng, place, b, jitter_sd=0.03)
    for side in (-1, 1):
        tissue[blob(0.27 * side, 0.74, 0.17, 0.21, 0.3 * side) & (tissue != AIR)] = MUSCLE
    tissue[blob(0, 0.77, 0.13, 0.13, roughness=0.02)] = BONE  # posterior arch
    tissue[blob(0, 0.93, 0.12, 0.045, roughness=0.02) & (tissue != AIR)] = BONE  # spinous process
    tissue[blob(0, 0.76, 0.065, 0.065, roughness=0.02)] = CANAL
    vertebra = blob(0, 0.5, 0.2, 0.22, roughness=0.05)
    tissue[vertebra] = BONE
    tissue[ndimage.binary_erosion(vertebra, iterations=max(1, round(0.04 * b)))] = MARROW
    aorta_radius = rng.uniform(0.08, 0.12)
    tissue[blob(0.12, 0.2, aorta_radius, aorta_radius, roughness=0.02)] = AORTA
    tissue[blob(-0.2, 0.18, 0.07, 0.11, roughness=0.1)] = IVC
    for side in (-1, 1):
        ry, rx, angle = (
            rng.uniform(0.2, 0.27),
            rng.uniform(0.12, 0.16),
            side * rng.uniform(0.2, 0.6),
        )
        kidney = blob(0.43 * side, 0.4, ry, rx, angle) & cavity
        tissue[kidney] = CORTEX
        tissue[ndimage.binary_erosion(kidney, iterations=max(1, round(0.05 * b)))] = MEDULLA
        tissue[blob(0.31 * side, 0.33, 0.06, 0.06, roughness=0.05) & kidney] = FAT  # hilum


def _paint_viscera(tissue, rng, place, b, cavity) -> None:
    """Bowel loops (some with gas), then liver and spleen on top (anterior and lateral)."""
    for _ in range(rng.integers(3, 8)):
        y, x = place(rng.uniform(-0.2, 0.45), rng.uniform(-0.7, 0.05))
        r, angle = b * rng.uniform(0.07, 0.15), rng.uniform(0, np.pi)
        loop = _blob(tissue.shape, (y, x), (r, r * rng.uniform(0.8, 1.4)), angle, rng, 0.15)
        loop &= cavity
        tissue[loop] = BOWEL
        if rng.random() < 0.4:
            gas = _blob(tissue.shape, (y - 0.3 * r, x), (0.4 * r, 0.6 * r), 0.0, rng)
            tissue[gas & loop] = GAS
    free = cavity & ~np.isin(tissue, (BONE, MARROW, CANAL, AORTA, IVC, CORTEX, MEDULLA))
    blob = _organ_maker(tissue.shape, rng, place, b, jitter_sd=0.05)
    ry, rx, angle = rng.uniform(0.45, 0.6), rng.uniform(0.5, 0.68), rng.uniform(-0.6, 0.1)
    tissue[blob(-0.42, -0.12, ry, rx, angle, roughness=0.14) & free] = LIVER
    ry, rx, angle = rng.uniform(0.25, 0.35), rng.uniform(0.12, 0.18), rng.uniform(0.3, 0.9)
    tissue[blob(0.62, 0.08, ry, rx, angle, roughness=0.1) & free] = SPLEEN


def _warp(tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth random displacement (up to ~3 % of the size), nearest-neighbour resampled."""
    size = tissue.shape[0]
    amplitude = size * rng.uniform(0.01, 0.03)
    grid = np.mgrid[: tissue.shape[0], : tissue.shape[1]].astype(np.float64)
    shift = [amplitude * _smooth_noise(tissue.shape, size / 8, rng) for _ in range(2)]
    return ndimage.map_coordinates(tissue, grid + np.stack(shift), order=0, mode="nearest")


def _paint_liver_interior(tissue: np.ndarray, rng: np.random.Generator) -> None:
    """Bright portal vessels and (with ``LESION_PROBABILITY``) one lesion inside."""
    liver = tissue == LIVER
    depth = ndimage.distance_transform_edt(liver)
    for _ in range(rng.integers(2, 6)):
        candidates = np.argwhere(depth >= 3)
        if len(candidates) == 0:
            break
        center = candidates[rng.integers(len(candidates))]
        r = rng.uniform(0.8, 2.0)
        vessel = _blob(tissue.shape, center, (r, r * rng.uniform(1, 3)), rng.uniform(0, np.pi), rng)
        tissue[vessel & (depth >= 1.5)] = VESSEL
    if rng.random() >= LESION_PROBABILITY or depth.max() < 5:
        return
    # Radius 7-12 % of the field of view (about 2.5-4 cm, capped by the liver's depth): a
    # large lesion, so that the demo's 128-pixel model learns it from any seed's phantoms.
    smallest = max(2.5, LESION_RADIUS_FOV[0] * tissue.shape[0])
    largest = max(smallest + 0.5, min(0.6 * depth.max(), LESION_RADIUS_FOV[1] * tissue.shape[0]))
    radius = float(np.exp(rng.uniform(np.log(smallest), np.log(largest))))
    candidates = np.argwhere(depth >= min(radius + 2, depth.max()))
    center = candidates[rng.integers(len(candidates))]
    radii, angle = (radius, radius * rng.uniform(0.7, 1.3)), rng.uniform(0, np.pi)
    lesion = _blob(tissue.shape, center, radii, angle, rng, roughness=0.2)
    tissue[lesion & (depth >= 2)] = LESION


def _render(tissue: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HU image: per-case tissue means, smooth texture, mesenteric fat mix, blur, noise."""
    hu = _HU + rng.standard_normal(len(_HU)) * _HU_CASE_SD
    hu[LESION] = hu[LIVER] + rng.choice(
        [-1, 1], p=[LESION_HYPODENSE, 1 - LESION_HYPODENSE]
    ) * rng.uniform(*LESION_CONTRAST_HU)
    scale = tissue.shape[0] / 128  # texture grain follows anatomy size, not pixel count
    texture = _smooth_noise(tissue.shape, scale * rng.uniform(0.8, 1.6), rng)
    image = hu[tissue] + _TEXTURE_SD[tissue] * texture
    fatty = _smooth_noise(tissue.shape, scale * rng.uniform(1.0, 2.0), rng)
    mesentery = 1 / (1 + np.exp(-3 * fatty))
    viscera = tissue == VISCERA
    image[viscera] = (hu[FAT] + (hu[BOWEL] - hu[FAT]) * mesentery)[viscera]
    image = ndimage.gaussian_filter(image, rng.uniform(0.5, 0.9))  # partial volume
    image += rng.normal(0, rng.uniform(6, 20), image.shape)
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def generate_phantom(
    seed: int | np.random.Generator,
    size: int = 128,
    structures: Sequence[str] = ABDOMEN_STRUCTURES,
) -> Phantom:
    """Make one seeded phantom slice.

    Args:
        seed: an int (or a numpy Generator, consumed); the same int gives the same phantom.
        size: image side S in pixels (>= 64); the image is ``(S, S)``.
        structures: which structures to label, from ``STRUCTURES``; their order sets the label
            values 1, 2, ... The image does not depend on this choice.

    Returns:
        A ``Phantom``: int16 HU image, uint8 label map, name -> value mapping. The lesion
        (absent in about 15 % of cases) lies inside the liver with at least 1 px of liver
        around it; "liver" includes the lesion unless "lesion" is labelled too.
    """
    if size < 64:
        raise ValueError(f"size must be >= 64 pixels, got {size}")
    names = label_mapping(structures)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    tissue = np.full((size, size), AIR, dtype=np.uint8)
    place, b, cavity = _paint_body(tissue, rng, size)
    _paint_retroperitoneum(tissue, rng, place, b, cavity)
    _paint_viscera(tissue, rng, place, b, cavity)
    tissue = _warp(tissue, rng)
    back = np.flatnonzero(tissue.any(axis=1)).max()
    tissue[min(back + 2, size - 2) :][:2] = TABLE  # the couch, unwarped, just below the back
    _paint_liver_interior(tissue, rng)
    image = _render(tissue, rng)
    labels = np.zeros((size, size), dtype=np.uint8)
    for name in STRUCTURES:  # precedence order, whatever the order of `structures`
        if name in names:
            labels[np.isin(tissue, _TISSUES_OF[name])] = names[name]
    return Phantom(image=image, labels=labels, label_names=names)


def window_ct(hu: np.ndarray, level: float = 40.0, width: float = 400.0) -> np.ndarray:
    """Map HU to uint8 0-255 through a CT window (default abdomen: level 40, width 400)."""
    if width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    scaled = (np.asarray(hu, dtype=np.float64) - (level - width / 2)) / width * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _save_png(path: Path, array: np.ndarray) -> None:
    """Save a ``(H, W)`` uint8 array as an 8-bit grey PNG (PIL mode "L")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_phantom_dataset(
    root: str | os.PathLike[str],
    n_cases: int,
    seed: int,
    size: int = 128,
    structures: Sequence[str] = ABDOMEN_STRUCTURES,
    n_test: int = 0,
    window: tuple[float, float] = (40.0, 400.0),
    case_prefix: str = "phantom",
    overwrite: bool = False,
) -> Path:
    """Write phantoms as an nnU-Net v2 raw dataset of 8-bit PNGs (CT-windowed).

    Layout: ``root/dataset.json``, ``root/imagesTr/{case}_0000.png`` (uint8 grey),
    ``root/labelsTr/{case}.png`` (uint8 label values) and, if ``n_test > 0``, the same under
    ``imagesTs``/``labelsTs``. Case names are ``{case_prefix}_{i:03d}``; case ``i`` is seeded
    by ``(seed, i)``, test cases continue the numbering. Same arguments, same bytes.

    Args:
        root: dataset folder (e.g. ``nnUNet_raw/Dataset900_Phantom``); must be empty or absent
            unless ``overwrite`` (which rewrites our files and deletes nothing).
        n_cases, n_test: number of training / test cases (>= 1 / >= 0).
        seed: base seed; different seeds give different images.
        size, structures: as in ``generate_phantom``.
        window: CT ``(level, width)`` in HU used to map the images to 0-255.
        case_prefix: prefix of the case names.

    Returns:
        ``root`` as a Path.
    """
    if n_cases < 1 or n_test < 0:
        raise ValueError(f"need n_cases >= 1 and n_test >= 0, got {n_cases} and {n_test}")
    root = Path(root)
    if root.exists() and any(root.iterdir()) and not overwrite:
        raise FileExistsError(f"{root} is not empty; pass overwrite=True to write into it")
    names = label_mapping(structures)
    splits = [("Tr", range(n_cases)), ("Ts", range(n_cases, n_cases + n_test))]
    for suffix, indices in splits:
        for i in indices:
            case = f"{case_prefix}_{i:03d}"
            phantom = generate_phantom(np.random.default_rng([seed, i]), size, structures)
            _save_png(
                root / f"images{suffix}" / f"{case}_0000.png", window_ct(phantom.image, *window)
            )
            _save_png(root / f"labels{suffix}" / f"{case}.png", phantom.labels)
    dataset = {
        "name": "S-SAM phantom",
        "description": f"Synthetic CT-like abdominal slices (seed {seed}), CT window level "
        f"{window[0]} / width {window[1]} HU mapped to 0-255; see ssam.demo.phantoms.",
        "channel_names": {"0": "CT"},
        "labels": names,
        "numTraining": n_cases,
        "file_ending": ".png",
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    return root
