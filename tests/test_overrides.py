"""``--set`` overrides and config files: any bad key, index or value is one line naming the key
and what is allowed (exit status 2 through the CLI, never a traceback)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ssam.config.train import load_train_config
from ssam.errors import ConfigError

ONE_DATASET = "datasets=[{path: /tmp, layout: folder, label: polyp}]"


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    for sub in ("images", "masks"):
        (root / sub).mkdir()
    for i in range(2):
        mask = np.zeros((24, 24), np.uint8)
        mask[4 + i : 14, 6:18] = 255
        Image.fromarray(mask // 2 + 40).save(root / "images" / f"case{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i}.png")
    return root


BAD = [
    ("datasets.split.group_pattern=^(p\\d+)", "datasets.0.split.group_pattern"),
    ("datasets.3.label=x", "datasets has 1 entry (indices 0)"),
    ("datasets.-1.label=x", "datasets has 1 entry"),
    ("split.val_fraction=0.1", "use datasets.N.split"),
    ("foo=1", "unknown key foo (allowed here: activation_checkpointing, batch_size"),
    ("epochs=abc", "epochs: Input should be a valid integer"),
    ("epochs=0", "epochs: Input should be greater than or equal to 1"),
    ("datasets.0.split.val_fraction=1.5", "datasets.0.split.val_fraction: Input should be less"),
    ("model.varient=vit_b", "unknown key model.varient (allowed here: allow_download"),
    ("datasets.0.split.x=1", "allowed here: fold, group_pattern, seed, source, val_fraction"),
    ("lr", "must look like key=value"),
]


@pytest.mark.parametrize(("override", "expected"), BAD)
def test_bad_overrides_name_the_key(override, expected):
    with pytest.raises(ConfigError) as err:
        load_train_config(None, [ONE_DATASET, override])
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_bad_overrides_through_the_cli(folder_dataset, tmp_path):
    """Each bad override in a real process: exit 2, one line naming the key, no traceback."""
    for override, expected in BAD:
        done = subprocess.run(
            [sys.executable, "-m", "ssam", "train", "--data", str(folder_dataset), "--label",
             "polyp", "--output-dir", str(tmp_path / "run"), "--set", override],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, (override, done.stderr[-1500:])
        assert "Traceback" not in done.stderr and expected in done.stderr, (override, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (tmp_path / "run").exists()


def test_a_bad_config_file_is_one_line_naming_it(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("datasets: [{path: /tmp, layout: folder}]\nepochs: -3\nsplit: {seed: 1}\n")
    with pytest.raises(ConfigError) as err:
        load_train_config(config)
    message = str(err.value)
    assert message.startswith(str(config)) and "\n" not in message
    assert "epochs: Input should be greater than or equal to 1" in message
    assert "use datasets.N.split" in message and "needs field 'label'" in message
