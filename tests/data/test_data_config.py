"""Dataset config validation: good entries parse, bad ones name their field."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from ssam.config.data import DatasetConfig, IntensityConfig


def test_yaml_entry_parses_with_defaults():
    text = """
    path: ../shared/data/curvas-ct
    layout: nnunet
    intensity: {preset: ct, window_level: 40, window_width: 400}
    split: dataset
    """
    config = DatasetConfig.model_validate(yaml.safe_load(text))
    assert config.split.source == "dataset" and config.neg_ratio == 1.0 and config.weight == 1.0
    assert config.intensity.window_bounds() == (-160.0, 240.0)
    assert config.dataset_name == "curvas-ct" and config.slice_axis == -1
    assert not config.augment.hflip


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({"layout": "folder"}, "label"),
        ({"layout": "nnunet", "weight": 0}, "weight"),
        ({"layout": "nnunet", "neg_ratio": -1}, "neg_ratio"),
        ({"layout": "nnunet", "slice_axis": 3}, "slice_axis"),
        ({"layout": "nnunet", "channels": [0, 1, 2, 3]}, "channels"),
        ({"layout": "nnunet", "colour": "red"}, "colour"),
        ({"layout": "grid"}, "layout"),
        ({"layout": "nnunet", "split": {"val_fraction": 1.0}}, "val_fraction"),
        ({"layout": "nnunet", "split": {"group_pattern": "(("}}, "group_pattern"),
        ({"layout": "folder", "label": "x", "channels": [0]}, "channels"),
        ({"layout": "nnunet", "label": "x"}, "label"),
        ({"layout": "nnunet", "intensity": {"preset": "ct"}}, "window_level"),
        (
            {
                "layout": "nnunet",
                "intensity": {"preset": "ct", "window_level": 1, "window_width": -2},
            },
            "window_width",
        ),
        (
            {"layout": "nnunet", "intensity": {"preset": "mri", "percentiles": [99, 1]}},
            "percentiles",
        ),
        ({"layout": "nnunet", "intensity": {"preset": "minmax", "window_min": 0}}, "window_min"),
    ],
)
def test_errors_name_the_field(entry, field):
    with pytest.raises(ValidationError, match=field):
        DatasetConfig.model_validate({"path": "x", **entry})


def test_ct_window_min_max_order():
    with pytest.raises(ValidationError, match="window_min"):
        IntensityConfig(preset="ct", window_min=100, window_max=0)
    assert IntensityConfig(preset="ct", window_min=-100, window_max=300).window_bounds() == (
        -100,
        300,
    )
