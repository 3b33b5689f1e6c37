"""Configuration models: one home for every setting (pydantic, validated)."""

from ssam.config.data import AugmentConfig, DatasetConfig, IntensityConfig, SplitConfig

__all__ = ["AugmentConfig", "DatasetConfig", "IntensityConfig", "SplitConfig"]
