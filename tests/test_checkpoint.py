"""Bad checkpoint files give one clear CheckpointError naming the file, never a torch traceback."""

import os
import pickle
import random
import subprocess
import sys

import pytest
import torch

from ssam.errors import CheckpointError
from ssam.sam.build import build_random_sam, build_sam
from ssam.sam.checkpoint import load_sam_weights, read_state_dict, save_state_dict
from ssam.sam.variants import SamSpec, ViTEncoderSpec, get_sam_spec


class _RunsCode:
    """Unpickling this would execute a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _load_tiny(path):
    sam = build_sam(get_sam_spec("tiny"), 64)
    load_sam_weights(sam, path, get_sam_spec("tiny"))
    return sam


def _assert_clean(err: pytest.ExceptionInfo, path) -> None:
    assert str(path) in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_truncated_checkpoint(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as err:
        _load_tiny(bad)
    _assert_clean(err, bad)


@pytest.mark.parametrize("size", [1024, 4096])
def test_random_bytes(tmp_path, size):
    # Random bytes reach torch's legacy-pickle parser, which fails with IndexError, KeyError,
    # UnpicklingError, ... depending on the bytes: every seed must give the same clean error.
    bad = tmp_path / "noise.pth"
    for seed in range(200):
        bad.write_bytes(random.Random(seed).randbytes(size))
        with pytest.raises(CheckpointError) as err:
            _load_tiny(bad)
        _assert_clean(err, bad)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    torch.save({"image_encoder.pos_embed": _RunsCode(marker)}, bad)
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(pickle.dumps(_RunsCode(marker)))
    for path in (bad, legacy):
        with pytest.raises(CheckpointError) as err:
            read_state_dict(path)
        _assert_clean(err, path)
    assert not marker.exists()


def test_wrong_variant_is_named(tiny_checkpoint):
    sam = build_sam(get_sam_spec("tiny"), 64)
    with pytest.raises(CheckpointError, match="embed dim 32 and 4 blocks.*needs embed dim 768"):
        load_sam_weights(sam, tiny_checkpoint, get_sam_spec("vit_b"))


def test_variant_guess_for_official_sizes(tmp_path):
    # A fake "vit_l-shaped" encoder: the error says what it looks like.
    state = {"image_encoder.pos_embed": torch.zeros(1, 2, 2, 1024)}
    state.update({f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(24)})
    path = save_state_dict(state, tmp_path / "large.pth")
    sam = build_sam(get_sam_spec("tiny"), 64)
    with pytest.raises(CheckpointError, match="looks like vit_l"):
        load_sam_weights(sam, path, get_sam_spec("tiny"))


def test_missing_and_unexpected_keys(tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra.weight"] = torch.zeros(1)
    path = save_state_dict(state, tmp_path / "keys.pth")
    with pytest.raises(CheckpointError, match=r"1 missing \['mask_decoder.iou_token.weight'\]"):
        _load_tiny(path)


def test_not_a_sam_checkpoint(tmp_path):
    path = save_state_dict({"weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a tiny .* checkpoint: no vit image encoder"):
        _load_tiny(path)


def test_wrong_tensor_shape_same_dims(tmp_path):
    other = SamSpec(
        "other",
        "vit",
        ViTEncoderSpec(32, 4, 2, (1, 3)),
        prompt_embed_dim=32,
        decoder_mlp_dim=48,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
        mask_in_chans=4,
    )
    path = save_state_dict(build_random_sam(other, 0).state_dict(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="wrong shape"):
        _load_tiny(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "absent.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_state_dict(tmp_path / "empty.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        read_state_dict(tmp_path / "bad.safetensors")


def test_safetensors_checkpoint_loads(tiny_checkpoint, tmp_path):
    from safetensors.torch import save_file

    state = torch.load(tiny_checkpoint, weights_only=True)
    path = tmp_path / "sam.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    sam = _load_tiny(path)
    assert torch.equal(sam.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])


def test_cli_reports_bad_checkpoint_without_traceback(tmp_path):
    bad = tmp_path / "noise.pth"
    bad.write_bytes(random.Random(7).randbytes(1024))
    env = {**os.environ, "SSAM_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssam",
            "info",
            "--model",
            "tiny",
            "--sam-checkpoint",
            str(bad),
            "--text-encoder",
            "tiny",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(bad) in result.stderr and result.stderr.count("\n") == 1
