"""The README's Python examples run as written, against full-size official-layout base files
(SAM ViT-B and the CLIP ViT-B/32 text tower, seeded random weights) under the names it uses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from predict_helpers import one_thread
from ssam.sam.build import build_random_sam
from ssam.sam.checkpoint import save_state_dict
from ssam.sam.variants import get_sam_spec
from ssam.text import build_text_tower, get_text_spec

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.mark.slow
def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text())
    assert blocks, "the README has no Python example"
    sam = build_random_sam(get_sam_spec("vit_b"), seed=0)
    save_state_dict(sam.state_dict(), tmp_path / "sam_vit_b_01ec64.pth")
    del sam
    tower = build_text_tower(get_text_spec("clip_vit_b32"))
    torch.save(tower.state_dict(), tmp_path / "ViT-B-32.pt")
    monkeypatch.chdir(tmp_path)
    with one_thread():
        for block in blocks:
            exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    assert (tmp_path / "liver.safetensors").stat().st_size < 3_000_000
