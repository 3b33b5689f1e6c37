"""The paper's reference code beside ours: one training step and inference, timed in one run.

    git clone https://github.com/JayParanjape/SVDSAM /path/to/SVDSAM
    python bench/reference_code.py --reference /path/to/SVDSAM
    python bench/reference_code.py --reference /path/to/SVDSAM --rounds 1 --infer-rounds 1 --warmup 0  # smoke

An EXTERNAL comparison: the reference code (github JayParanjape/SVDSAM) is imported from the
checkout given by ``--reference`` (put first on ``sys.path`` while its modules are imported);
nothing of it is copied into this repository, and nothing is downloaded. Its S-SAM model is
built as its ``driver_scratchpad.py main_train`` builds it with ``--training_strategy
svdtuning``: ``model.Prompt_Adapted_SAM`` from its ``model_svdtuning.yml`` (ViT-B, ``sam_type:
base``) at input 256 (the image size of its data configs; its model hard-codes a 16 x 16 image
embedding, so 256 is the only size it runs at), one class, ``use_lora`` off, and its parameter
freezing rules for svdtuning (restated in ``reference_trains``). Ours is S-SAM as
``bench/workloads.py`` builds it: ``build_training_model(setup, "ssam")`` and
``build_inference_model(setup, "ssam_adapted")``.

Weights are random on both sides (speed does not depend on values):
* SAM ViT-B: one seeded random state dict in the official key layout (``build_random_sam`` +
  ``save_state_dict``), read by both. The reference's ``model.py`` calls ``torch.load`` on a
  hard-coded path (``.../sam_vit_b_01ec64.pth``); while it is built, ``torch.load`` of a file
  named ``sam_vit_b*.pth`` reads the random file instead (every other call passes through).
* CLIP: the reference calls its own ``clip.load("ViT-B/32")``, which downloads OpenAI's file
  into ``~/.cache/clip``. Its ``clip.clip._download`` is replaced while it is built by one that
  returns a seeded random state dict of the same architecture (its own ``clip.model.CLIP`` with
  ViT-B/32's sizes) written to the temporary folder; its loader (``build_model``, fp16 then
  float on CPU) runs unchanged. Ours has the suite's text encoder (``workloads.TEXT_ENCODER``,
  seeded random weights from ``workloads.write_random_clip``), which a step never runs.
* einops: the reference's ``svd_layers.py`` imports ``einops.rearrange`` for two reshapes of
  its SVD convolutions. If einops is not installed, a stand-in module with exactly those two
  patterns (plain ``reshape``) is put in ``sys.modules``; any other pattern raises.
* The reference computes each layer's SVD lazily in its first forward (after loading weights);
  here that is done at build, outside the timing, as ours computes it in ``create_model``.

What is timed, interleaved in one process (rounds rotate the order, medians, ratios of medians
and paired ratios ours / reference, ``measure.time_interleaved``):
* training step at batch 2: zero grads, forward, loss, backward, AdamW (lr 1e-4, weight decay
  1e-2, as its config) over the trainable parameters. The reference's own loss on its own output
  (``utils.dice_loss`` + ``utils.focal_loss`` on its sigmoid masks, + ``reg_multiplier`` times its
  SVD regulariser, as its ``train_dl``); ours focal + Dice on logits. Same random images and
  targets;
* inference at batch 1: eval mode, ``torch.inference_mode``;
* the reference's text path alone (``clip.tokenize`` + ``encode_text``), which its forward runs
  on every call; ours receives label features as tensors (CLIP is cached per label).
Also each side's trainable parameter count and GFLOP per call (``FlopCounterMode``: matmuls,
convolutions, attention; one more call each, ``--no-flops`` skips it).

Prints a table and writes ``bench/results/reference_code_vit_b_256.json`` (or ``--out``) with
the command and the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import torch
import yaml
from torch import nn

import workloads as wl
from measure import count_flops, describe_machine, summarise, time_interleaved
from summary import RESULTS, command_line, format_table, write_results

VARIANT, IMAGE_SIZE = "vit_b", 256  # the reference's S-SAM: ViT-B ("base") at 256 only
REFERENCE_URL = "https://github.com/JayParanjape/SVDSAM"
# Files whose presence marks a checkout of the reference code.
CHECKOUT_FILES = (
    "model.py",
    "utils.py",
    "model_svdtuning.yml",
    "clip/clip.py",
    "prompt_adapted_segment_anything/modeling/svd_layers.py",
)
REFERENCE_MODULES = ("model", "utils", "clip", "prompt_adapted_segment_anything")
LABEL = "Polyp"  # the label name of its kvasir-seg config; one per image
REF, OURS, REF_TEXT = "reference", "ours", "reference: CLIP text only"
# OpenAI CLIP ViT-B/32 (the reference's clip.load("ViT-B/32")): embed dim, image resolution,
# vision layers, vision width, patch, context length, vocabulary, text width, heads, layers.
CLIP_VIT_B_32 = (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)


def fail(message: str) -> None:
    """A usage error in one line on stderr, exit status 2 (as argparse's own)."""
    print(f"reference_code.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reference", type=Path, default=None, help="checkout of " + REFERENCE_URL)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--train-batch", type=int, default=2, help="training batch (>= 2: its BN)")
    p.add_argument("--infer-batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5, help="timed training rounds")
    p.add_argument("--infer-rounds", type=int, default=7, help="timed inference rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one more call)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: bench/results/)")
    args = p.parse_args(argv)
    if args.reference is None:
        fail(f"--reference PATH is required: a checkout of {REFERENCE_URL} (git clone it)")
    args.reference = args.reference.expanduser().resolve()
    if not args.reference.is_dir():
        fail(f"--reference {args.reference} is not a folder: clone {REFERENCE_URL} there")
    missing = [f for f in CHECKOUT_FILES if not (args.reference / f).is_file()]
    if missing:
        fail(
            f"--reference {args.reference} is not a checkout of {REFERENCE_URL} "
            f"(no {', '.join(missing)})"
        )
    if args.train_batch < 2:
        fail("--train-batch must be at least 2 (the reference's text BatchNorm1d trains on it)")
    if min(args.infer_batch, args.rounds, args.infer_rounds, args.threads) < 1 or args.warmup < 0:
        fail("--infer-batch, --rounds, --infer-rounds and --threads must be >= 1, --warmup >= 0")
    args.out = args.out or RESULTS / f"reference_code_{VARIANT}_{IMAGE_SIZE}.json"
    return args


# ---- importing the reference code from the user's checkout ----


def _einops_stand_in() -> types.ModuleType:
    """``einops.rearrange`` for the two patterns the reference's SVDConv2d uses, nothing else."""

    def rearrange(tensor: torch.Tensor, pattern: str, **axes: int) -> torch.Tensor:
        if pattern == "co cin h w -> co (cin h w)":
            return tensor.reshape(tensor.shape[0], -1)
        if pattern == "co (cin h w) -> co cin h w":
            return tensor.reshape(tensor.shape[0], axes["cin"], axes["h"], axes["w"])
        raise NotImplementedError(f"einops stand-in: pattern {pattern!r}; install einops")

    module = types.ModuleType("einops")
    module.rearrange = rearrange
    module.__version__ = "stand-in (bench/reference_code.py)"
    return module


def import_reference(checkout: Path) -> tuple[types.ModuleType, types.ModuleType, str]:
    """The reference's ``model`` and ``utils`` modules, imported from ``checkout``; and what
    einops is (its version, or the stand-in). The checkout is on ``sys.path`` only meanwhile."""
    if importlib.util.find_spec("einops") is None:
        sys.modules["einops"] = _einops_stand_in()
    import einops as _einops

    einops = _einops.__version__
    clash = [m for m in REFERENCE_MODULES if m in sys.modules]
    if clash:
        raise RuntimeError(f"modules {clash} are already imported from elsewhere")
    sys.path.insert(0, str(checkout))
    try:
        import model as ref_model
        import utils as ref_utils
    finally:
        sys.path.remove(str(checkout))
    for module in (ref_model, ref_utils, sys.modules["clip"]):
        if not Path(module.__file__).resolve().is_relative_to(checkout):
            raise RuntimeError(f"{module.__name__} came from {module.__file__}, not {checkout}")
    return ref_model, ref_utils, einops


def reference_config(checkout: Path) -> dict:
    """Its ``model_svdtuning.yml`` with the settings its ``main_train`` applies for svdtuning
    on a data config of input 256 and one label."""
    config = yaml.safe_load((checkout / "model_svdtuning.yml").read_text())
    if config["sam"]["sam_type"] != "base":
        raise RuntimeError(f"model_svdtuning.yml: sam_type {config['sam']['sam_type']!r}")
    config["sam"]["img_size"] = IMAGE_SIZE
    config["sam"]["num_classes"] = 1
    config["use_lora"] = False
    return config


def reference_trains(name: str, config: dict) -> bool:
    """Whether the reference trains parameter ``name`` with ``--training_strategy svdtuning``:
    its ``driver_scratchpad.py main_train`` freezing rules, applied in its order (later rules
    override earlier ones)."""
    lower = name.lower()
    on = "trainable" in lower  # the SVD layers' scale and shift
    if config["prompts"]["USE_TEXT_PROMPT"] and "Text_Embedding_Affine" in name:
        on = True
    if config["prompts"]["USE_SLICE_NUM"] and "slice" in name:
        on = True
    decoder = config["decoder_training"]
    if decoder == "full":
        on = on or ("decoder" in lower and "clip" not in lower)
    elif decoder == "svdtuning":
        on = on or "trainable" in lower
    elif decoder == "none" and "decoder" in lower:
        on = False
    if "prompt_encoder" in lower:
        on = False
    if "norm" in lower or "pos_embed" in lower:
        on = True
    return on and "clip" not in lower


def write_random_reference_clip(folder: Path, seed: int = 0) -> Path:
    """A seeded random state dict of the reference's CLIP ViT-B/32 (its own ``CLIP`` class)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip_model = sys.modules["clip.model"].CLIP(*CLIP_VIT_B_32)
    path = folder / "reference_clip_vit_b_32_random.pt"
    torch.save(clip_model.state_dict(), path)
    return path


@contextlib.contextmanager
def random_weights(sam_file: Path, clip_file: Path) -> Iterator[dict]:
    """While the reference model is built: its hard-coded SAM checkpoint reads ``sam_file`` and
    its CLIP "download" returns ``clip_file``. Yields counts of both redirections."""
    clip_module = sys.modules["clip.clip"]
    clip_url = clip_module._MODELS["ViT-B/32"]
    real_load = torch.load
    used = {"sam": 0, "clip": 0}

    def load(f, *args, **kwargs):
        if isinstance(f, str | os.PathLike) and Path(f).name.startswith("sam_vit_b"):
            used["sam"] += 1
            f = sam_file
        return real_load(f, *args, **kwargs)

    def download(url: str, root: str | None = None) -> str:
        if url != clip_url:
            raise RuntimeError(f"the benchmark downloads nothing (asked for {url})")
        used["clip"] += 1
        return str(clip_file)

    with (
        mock.patch.object(torch, "load", load),
        mock.patch.object(clip_module, "_download", download),
    ):
        yield used


def build_reference(
    ref_model: types.ModuleType, config: dict, sam_file: Path, clip_file: Path
) -> nn.Module:
    """Its S-SAM (``Prompt_Adapted_SAM``, svdtuning) on CPU with the random weights, its
    freezing rules applied, and the SVD of every SVD layer done (it would do it in the first
    forward)."""
    quiet = io.StringIO()  # it prints its prompt config
    # Its clip.load tries torch.jit.load first (deprecated: a FutureWarning each build).
    with (
        random_weights(sam_file, clip_file) as used,
        contextlib.redirect_stdout(quiet),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", FutureWarning)
        model = ref_model.Prompt_Adapted_SAM(config, {}, "cpu", training_strategy="svdtuning")
    if used != {"sam": 1, "clip": 1}:
        raise RuntimeError(f"the reference read its weights differently than expected: {used}")
    _check_loaded(model, sam_file)
    for name, param in model.named_parameters():
        param.requires_grad_(reference_trains(name, config))
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "perform_svd"):
                module.perform_svd()
    return model


def _check_loaded(model: nn.Module, sam_file: Path) -> None:
    """Its loading is ``strict=False``: make sure the random SAM weights did arrive."""
    state = torch.load(sam_file, mmap=True)
    pairs = {
        "image_encoder.blocks.0.attn.qkv.weight": model.sam_encoder.blocks[0].attn.qkv.weight,
        "image_encoder.blocks.11.mlp.lin2.weight": model.sam_encoder.blocks[11].mlp.lin2.weight,
        "image_encoder.neck.2.weight": model.sam_encoder.neck.conv2.weight,
        "mask_decoder.iou_token.weight": model.mask_decoder.iou_token.weight,
        "prompt_encoder.no_mask_embed.weight": model.prompt_encoder.no_mask_embed.weight,
    }
    for key, tensor in pairs.items():
        if not torch.equal(state[key], tensor.detach()):
            raise RuntimeError(f"the reference model did not load {key} from the checkpoint")


# ---- the timed workloads ----


def reference_train_step(
    model: nn.Module, ref_utils: types.ModuleType, config: dict, images, target
) -> Callable[[], None]:
    """Its training step (``train.py train_dl``): its loss ('focal+dice': dice_loss + focal_loss
    on its sigmoid output) + reg_multiplier x its SVD regulariser, backward, AdamW."""
    optimizer = wl.make_optimizer(model)  # AdamW lr 1e-4, wd 1e-2: its config's values
    texts = [LABEL] * images.shape[0]
    target = target[:, 0]  # it outputs (B, S, S) masks
    criterion = [ref_utils.dice_loss, ref_utils.focal_loss]
    reg_multiplier = float(config["training"]["reg_multiplier"])

    def step() -> None:
        model.train()
        optimizer.zero_grad(set_to_none=True)
        masks, reg_loss = model(images, texts)
        loss = sum(c(masks, target) for c in criterion) + reg_loss * reg_multiplier
        loss.backward()
        optimizer.step()

    return step


def reference_infer_step(model: nn.Module, images) -> Callable[[], None]:
    texts = [LABEL] * images.shape[0]

    def step() -> None:
        model.eval()
        with torch.inference_mode():
            model(images, texts)

    return step


def reference_text_step(model: nn.Module, batch: int, inference: bool) -> Callable[[], None]:
    """The text path its forward runs on every call: tokenize, CLIP ``encode_text``."""
    clip = sys.modules["clip"]
    texts = [LABEL] * batch
    mode = torch.inference_mode if inference else contextlib.nullcontext

    def step() -> None:
        with mode():
            model.clip_model.encode_text(clip.tokenize(texts))

    return step


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def reference_trainable_parts(model: nn.Module) -> dict[str, int]:
    parts: dict[str, int] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            kind = (
                "svd scale/shift" if "trainable" in name
                else "pos_embed" if "pos_embed" in name
                else "text affine" if "Text_Embedding_Affine" in name
                else "norms"
            )  # fmt: skip
            parts[kind] = parts.get(kind, 0) + p.numel()
    return parts


def _rows(times: dict[str, list[float]], batch: int) -> list[dict]:
    """Medians per workload; ratio of medians and paired ratio (median of per-round ratios),
    each to the reference."""
    base = times[REF]
    rows = []
    for name, samples in times.items():
        paired = [t / b for t, b in zip(samples, base, strict=True)]
        rows.append(
            {
                "config": name,
                "batch": batch,
                **summarise(samples),
                "ratio": statistics.median(samples) / statistics.median(base),
                "paired_ratio": statistics.median(paired),
                "samples_s": samples,
            }
        )
    return rows


def _flops(steps: dict[str, Callable[[], None]], skip: bool) -> dict[str, float]:
    if skip:
        return {}
    return {name: count_flops(steps[name]) / 1e9 for name in (REF, OURS)}


def measure(setup: wl.BenchSetup, args, ref, ref_utils, config, clip_file: Path) -> dict:
    sam_file = Path(setup.checkpoint)
    out: dict = {}
    print("training step (interleaved) ...", flush=True)
    ours = wl.build_training_model(setup, "ssam")
    reference = build_reference(ref, config, sam_file, clip_file)
    out["trainable"] = {REF: trainable(reference), OURS: trainable(ours)}
    out["reference_trainable_parts"] = reference_trainable_parts(reference)
    images, _, target = wl.make_inputs(ours, args.train_batch)
    steps = {
        REF: reference_train_step(reference, ref_utils, config, images, target),
        OURS: wl.make_train_step(ours, wl.make_optimizer(ours), args.train_batch),
        REF_TEXT: reference_text_step(reference, args.train_batch, inference=False),
    }
    out["training"] = _rows(time_interleaved(steps, args.rounds, args.warmup), args.train_batch)
    out["training_gflop"] = _flops(steps, args.no_flops)
    del ours, reference, steps
    gc.collect()
    print("inference (interleaved) ...", flush=True)
    ours = wl.build_inference_model(setup, "ssam_adapted")
    reference = build_reference(ref, config, sam_file, clip_file).eval()
    images, _, _ = wl.make_inputs(ours, args.infer_batch)
    steps = {
        REF: reference_infer_step(reference, images),
        OURS: wl.make_infer_step(ours, args.infer_batch),
        REF_TEXT: reference_text_step(reference, args.infer_batch, inference=True),
    }
    out["inference"] = _rows(
        time_interleaved(steps, args.infer_rounds, args.warmup), args.infer_batch
    )
    out["inference_gflop"] = _flops(steps, args.no_flops)
    return out


# ---- report ----


def _f(value: float | None, digits: int = 3) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def format_report(results: dict) -> str:
    s, m = results["settings"], results["machine"]
    ref = results["reference"]
    head = (
        f"Reference code ({ref['path']}, commit {ref['commit'] or 'unknown'}) against ours: "
        f"SAM ViT-B at {IMAGE_SIZE}, float32, CPU ({m['cpu']}, {m['logical_cpus']} logical CPUs), "
        f"torch {m['torch']}, torch.set_num_threads({m['torch_threads']}); load average before "
        f"{', '.join(f'{x:.2f}' for x in m['load_average'])}, after "
        f"{', '.join(f'{x:.2f}' for x in results['load_average_after'])}.\n"
        f"Medians of {s['rounds']} interleaved training rounds and {s['infer_rounds']} inference "
        f"rounds after {s['warmup']} warm-up ('x ref': ratio of medians; 'paired': median of the "
        f"per-round ratios). Random weights on both sides; einops: {ref['einops']}."
    )
    trainable = results["trainable"]
    names = {REF: "reference (SVDSAM)", OURS: "ours (ssam)", REF_TEXT: REF_TEXT}
    parts = [head]
    for section, title in (("training", "Training step"), ("inference", "Inference")):
        gflop = results.get(f"{section}_gflop", {})
        rows = [
            (names[r["config"]], r["batch"], _f(r["median_s"]),
             _f(1000 * r["median_s"] / r["batch"], 1), _f(r["ratio"]), _f(r["paired_ratio"]),
             _f(gflop.get(r["config"]), 1))
            + ((f"{trainable[r['config']]:,}" if r["config"] in trainable else None,)
               if section == "training" else ())
            for r in results[section]
        ]  # fmt: skip
        headers = ("", "batch", "median s", "ms/image", "x ref", "paired", "GFLOP/call")
        headers += ("trainable",) if section == "training" else ()
        parts.append(f"{title}\n" + format_table(headers, rows))
    parts.append(
        "Reference trainable parameters: "
        + ", ".join(f"{k} {v:,}" for k, v in results["reference_trainable_parts"].items())
    )
    return "\n\n".join(parts)


def _commit(checkout: Path) -> str | None:
    """The checkout's git commit, if it is a git work tree of its own."""
    if not (checkout / ".git").exists():
        return None
    try:
        done = subprocess.run(
            ["git", "-C", str(checkout), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def run(args: argparse.Namespace, work_dir: Path, argv: list[str] | None = None) -> dict:
    torch.set_num_threads(args.threads)
    machine = describe_machine(args.threads)
    ref, ref_utils, einops = import_reference(args.reference)
    config = reference_config(args.reference)
    cache = work_dir / "cache"
    os.environ["SSAM_CACHE"] = str(cache)  # never the user's cache: random weights only
    checkpoint = wl.write_random_checkpoint(VARIANT, work_dir)
    clip_file = write_random_reference_clip(work_dir)
    setup = wl.BenchSetup(
        variant=VARIANT,
        image_size=IMAGE_SIZE,
        checkpoint=str(checkpoint),
        cache_dir=str(cache),
        threads=args.threads,
        work_dir=str(work_dir),
        clip_checkpoint=str(wl.write_random_clip(work_dir)),
    )
    results: dict = {
        "command": command_line("reference_code.py", argv),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine,
        "reference": {
            "url": REFERENCE_URL,
            "path": str(args.reference),
            "commit": _commit(args.reference),
            "model": "model.Prompt_Adapted_SAM, model_svdtuning.yml, training_strategy svdtuning",
            "label": LABEL,
            "einops": einops,
            "patched": [
                "torch.load of its hard-coded sam_vit_b_01ec64.pth reads a seeded random SAM "
                "ViT-B in the official key layout (while it is built)",
                "clip.clip._download returns a seeded random CLIP ViT-B/32 state dict file "
                "(while it is built): nothing is downloaded",
                "the SVD it does in its first forward is done at build, outside the timing",
            ]
            + (
                ["einops.rearrange: a stand-in for its two reshapes"]
                if "stand-in" in einops
                else []
            ),
        },
    }
    results.update(measure(setup, args, ref, ref_utils, config, clip_file))
    results["load_average_after"] = describe_machine(args.threads)["load_average"]
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ssam-reference-") as tmp:
        results = run(args, Path(tmp), argv)
    print(format_report(results))
    write_results(results, args.out)
    print(f"\nwritten {args.out}\ncommand: {results['command']}")
    return results


if __name__ == "__main__":
    main()
