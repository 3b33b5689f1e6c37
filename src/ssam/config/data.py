"""Configuration of one training dataset: where it is, how it is laid out and preprocessed.

Self-contained pydantic v2 models, meant to be composed into a training config as a list
of `DatasetConfig` entries. Unknown keys are rejected, and every error names its field
(pydantic reports the field path; cross-field checks name the fields in their message).

Example (YAML)::

    path: data/abdomen-ct          # NIfTI volumes in Hounsfield units
    layout: nnunet
    intensity: {preset: ct, window_level: 40, window_width: 400}
    split: {val_fraction: 0.2, seed: 0, group_pattern: "^(patient\\d+)_"}  # default: auto
    neg_ratio: 1.0
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IntensityPreset = Literal["auto", "rgb", "minmax", "ct", "mri"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IntensityConfig(_Strict):
    """How raw intensities become 0-255 before SAM's pixel normalisation.

    - ``auto`` (default): chosen per image or volume by its stored type, the same rule in
      training and prediction: uint8 as ``rgb``, other 2D images ``minmax``, other volumes
      ``mri`` (percentiles 0.5-99.5). For CT, a ``ct`` window gives soft tissue more contrast.
    - ``rgb``: as is; uint8 passes through, uint16 is scaled by 255/65535, other dtypes are
      clipped to [0, 255].
    - ``minmax``: per channel, (x - min) / (max - min) * 255 over the whole image or volume.
    - ``ct``: window given as ``window_level``/``window_width`` or ``window_min``/``window_max``
      (in stored units, e.g. HU after DICOM rescale), clipped, then scaled to 0-255.
    - ``mri``: per channel, clip to the ``percentiles`` (low, high) of the image or volume,
      then min-max to 0-255.
    """

    preset: IntensityPreset = "auto"
    window_level: float | None = None
    window_width: float | None = Field(default=None, gt=0)
    window_min: float | None = None
    window_max: float | None = None
    percentiles: tuple[float, float] = (0.5, 99.5)

    @field_validator("percentiles")
    @classmethod
    def _check_percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {value}")
        return value

    @model_validator(mode="after")
    def _check_window(self) -> IntensityConfig:
        level_width = (self.window_level, self.window_width)
        min_max = (self.window_min, self.window_max)
        given_lw = any(v is not None for v in level_width)
        given_mm = any(v is not None for v in min_max)
        if self.preset != "ct":
            if given_lw or given_mm:
                raise ValueError(
                    f"window_level/window_width/window_min/window_max apply to preset 'ct' "
                    f"only, not to preset '{self.preset}'"
                )
            return self
        if given_lw == given_mm:
            raise ValueError(
                "preset 'ct' needs either window_level and window_width, "
                "or window_min and window_max (exactly one of the two pairs)"
            )
        if given_lw and None in level_width:
            raise ValueError("preset 'ct': window_level and window_width must be given together")
        if given_mm:
            if None in min_max:
                raise ValueError("preset 'ct': window_min and window_max must be given together")
            if self.window_min >= self.window_max:  # type: ignore[operator]
                raise ValueError(
                    f"window_min ({self.window_min}) must be below window_max ({self.window_max})"
                )
        return self

    def window_bounds(self) -> tuple[float, float]:
        """(low, high) of the CT window; only for preset 'ct'."""
        if self.preset != "ct":
            raise ValueError(f"window_bounds: preset is '{self.preset}', not 'ct'")
        if self.window_min is not None and self.window_max is not None:
            return float(self.window_min), float(self.window_max)
        half = float(self.window_width) / 2.0  # type: ignore[arg-type]
        return float(self.window_level) - half, float(self.window_level) + half  # type: ignore[arg-type]


class AugmentConfig(_Strict):
    """Training-time augmentation, applied identically to image and mask.

    Rotation angle is uniform in [-rotation_deg, rotation_deg]; brightness multiplies the
    0-255 image by a factor uniform in [1 - brightness, 1 + brightness]; each enabled flip
    happens with probability 0.5. Flips are off by default: they break left/right anatomy.
    """

    rotation_deg: float = Field(default=10.0, ge=0.0, le=180.0)
    brightness: float = Field(default=0.1, ge=0.0, lt=1.0)
    hflip: bool = False
    vflip: bool = False


class SplitConfig(_Strict):
    """Train/validation split, always by case (never by slice), and by group where names say
    that cases are slices or frames of one patient or sequence (``ssam.data.splits``).

    ``source='auto'`` (default): the dataset's own split where it ships one (nnU-Net
    ``splits_final.json``, fold ``fold``), else a seeded fraction.
    ``source='fraction'``: a seeded random ``val_fraction`` of the groups.
    ``source='dataset'``: fold ``fold`` of ``splits_final.json`` (an error if absent).
    ``group_pattern``: ``auto`` (default) groups 2D cases by the patient, case or sequence id
    in their names (``patient0001``, ``case_00012``, ``sub-01``, ``P12`` anywhere; PATIENT_SLICE
    or SEQ_FRAME; an id several names share); ``none``: each case alone; otherwise a regex
    on the case id whose first group, or whole match, names the group. When each 2D case
    stays alone, near-duplicate images across the split are warned about.
    The nnU-Net ``imagesTs`` cases are the test set in every mode.
    """

    source: Literal["auto", "fraction", "dataset"] = "auto"
    val_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    seed: int = Field(default=0, ge=0)
    fold: int = Field(default=0, ge=0)
    group_pattern: str | None = "auto"

    @field_validator("group_pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"group_pattern is not a valid regex: {exc}") from exc
        return value


class DatasetConfig(_Strict):
    """One dataset entry of a training config."""

    path: Path
    layout: Literal["folder", "nnunet"]
    name: str | None = Field(default=None, description="defaults to the folder name")
    label: str | None = Field(default=None, description="folder layout: the mask's label name")
    labels: list[str] | None = Field(
        default=None, description="nnunet layout: train on these labels only (default: all)"
    )
    images_dir: str = "images"
    masks_dir: str = "masks"
    channels: list[int | str] | None = Field(
        default=None, description="nnunet layout: channel indices or names (1 to 3)"
    )
    slice_axis: int = Field(default=-1, ge=-3, le=2)
    intensity: IntensityConfig = IntensityConfig()
    augment: AugmentConfig = AugmentConfig()
    weight: float = Field(default=1.0, gt=0.0)
    split: SplitConfig = SplitConfig()
    neg_ratio: float | None = Field(default=1.0, ge=0.0)
    drop_background_slices: bool = False
    skip_bad: bool = False

    @field_validator("split", mode="before")
    @classmethod
    def _split_shorthand(cls, value: object) -> object:
        if value == "dataset":
            return {"source": "dataset"}
        return value

    @field_validator("label", "name")
    @classmethod
    def _check_name(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, value: list[int | str] | None) -> list[int | str] | None:
        if value is not None and not 1 <= len(value) <= 3:
            raise ValueError(f"give 1 to 3 channels (SAM takes 3), got {len(value)}")
        return value

    @model_validator(mode="after")
    def _check_layout(self) -> DatasetConfig:
        if self.layout == "folder":
            if self.label is None:
                raise ValueError("layout 'folder' needs field 'label' (the mask's label name)")
            for field in ("labels", "channels"):
                if getattr(self, field) is not None:
                    raise ValueError(f"field '{field}' applies to layout 'nnunet' only")
            if self.split.source == "dataset":
                raise ValueError("split source 'dataset' needs layout 'nnunet'")
        elif self.label is not None:
            raise ValueError("field 'label' applies to layout 'folder'; use 'labels' for nnunet")
        return self

    @property
    def dataset_name(self) -> str:
        """The configured name, else the dataset folder's name."""
        return self.name or self.path.resolve().name
