"""``ssam demo``: the whole S-SAM story offline, in minutes, on phantoms or your data."""

from ssam.demo.run import DemoOptions, DemoResult, run_demo

__all__ = ["DemoOptions", "DemoResult", "run_demo"]
