"""A finished demo run as a base model: the small SAM it pre-trained, for training offline.

The demo's foundation is the only SAM a machine without the official files has. Its settings
(variant ``demo``, its input size, the toy text tower) are read back from the run's own
``train/config.yaml``, so ``ssam train --base runs/demo`` needs no other flag. The learning
rate the demo trains with (1e-2; the paper's 1e-4 suits ViT-B, not this small model) is the
default unless the config or ``--set optim.lr=...`` gives another.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ssam.errors import ConfigError

DEMO_LR = 1e-2
_MODEL_KEYS = ("variant", "image_size", "text_encoder", "sam_checkpoint")


def read_demo_base(folder: str | Path) -> dict[str, object]:
    """The model settings of the demo run in ``folder``, as dotted config keys.

    Raises:
        ConfigError: ``folder`` holds no finished demo run (naming what is missing).
    """
    folder = Path(folder)
    config_path = folder / "train" / "config.yaml"
    checkpoint = folder / "foundation" / "sam_demo.pth"
    for needed in (folder / "demo.json", config_path, checkpoint):
        if not needed.is_file():
            raise ConfigError(
                f"--base {folder}: not a finished demo run ({needed} is missing); "
                f"run `ssam demo --output-dir {folder}` first"
            )
    try:
        model = yaml.safe_load(config_path.read_text())["model"]
        settings = {f"model.{key}": model[key] for key in _MODEL_KEYS}
    except (yaml.YAMLError, KeyError, TypeError) as err:
        raise ConfigError(f"{config_path}: unreadable demo settings ({err})") from None
    settings["model.sam_checkpoint"] = str(checkpoint.resolve())
    settings["model.allow_download"] = False
    return settings


def base_overrides(folder: str | Path, lr_given: bool) -> list[str]:
    """``key=value`` overrides for the demo base in ``folder``, to be placed before the user's
    own (which win); with the demo's learning rate unless ``lr_given``."""
    overrides = [f"{key}={value}" for key, value in read_demo_base(folder).items()]
    if not lr_given:
        overrides.append(f"optim.lr={DEMO_LR}")
    return overrides
