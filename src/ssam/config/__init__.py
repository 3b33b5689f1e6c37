"""Configuration models."""
