"""S-SAM: singular-value fine-tuning of Segment Anything, prompted by label names."""

__version__ = "0.1.0"
