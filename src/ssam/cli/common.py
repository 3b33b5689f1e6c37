"""Option handling shared by the commands: training configs, and loading a model to predict."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ssam.errors import ONNX_PACKAGES, ConfigError, require_packages

if TYPE_CHECKING:
    from ssam.config.data import IntensityConfig
    from ssam.config.train import TrainConfig
    from ssam.inference.predictor import SSAMPredictor


def parse_labels(values: list[str] | None) -> tuple[str, ...] | None:
    """``--label a --label "b,c"`` -> ("a", "b", "c"); None when the option was not given."""
    if values is None:
        return None
    names = tuple(part.strip() for value in values for part in value.split(",") if part.strip())
    if not names:
        raise ConfigError("the label list is empty: name at least one label with --label")
    return names


def quick_dataset_overrides(data: Path, labels: tuple[str, ...] | None) -> list[str]:
    """Overrides describing one dataset given by --data/--label (layout detected): an nnU-Net
    dataset takes a list of labels (default: all); a folder dataset exactly one label."""
    layout = "nnunet" if (data / "dataset.json").is_file() else "folder"
    overrides = [f"datasets=[{{path: '{data.resolve()}', layout: {layout}}}]"]
    if layout == "folder" and labels is not None and len(labels) != 1:
        raise ConfigError(
            f"--data {data} is a folder dataset (no dataset.json): it has one label, so give "
            f"exactly one --label, not {len(labels)} ({', '.join(labels)})"
        )
    if labels is not None:
        key, value = ("label", labels[0]) if layout == "folder" else ("labels", list(labels))
        overrides.append(f"datasets.0.{key}={json.dumps(value)}")
    return overrides


def pick_output_dir(output_dir: Path | None, old_output: Path | None) -> Path | None:
    """``--output-dir``, or the deprecated ``--output`` spelling with a line on stderr."""
    if old_output is None:
        return output_dir
    print(
        "ssam: warning: --output is deprecated and will be removed in the next release; "
        "use --output-dir (or -o)",
        file=sys.stderr,
    )
    if output_dir is not None and output_dir != old_output:
        raise ConfigError("give the output folder once: --output-dir (or -o), not --output too")
    return old_output


def require_output_dir(output_dir: Path | None, old_output: Path | None) -> Path:
    """``pick_output_dir`` for commands that must write somewhere: a usage error if neither."""
    import click

    chosen = pick_output_dir(output_dir, old_output)
    if chosen is None:
        raise click.UsageError("Missing option '--output-dir' / '-o'.")
    return chosen


# Each weights flag: what the file is and how to get it right.
_FILE_FIXES = {
    "adapter": "give an adapter written by `ssam train` (RUN/best.safetensors or "
    "RUN/last.safetensors)",
    "merged": "give a checkpoint written by `ssam merge` (its .ssam.safetensors beside it)",
    "sam_checkpoint": "give the path of an official SAM checkpoint (e.g. sam_vit_b_01ec64.pth), "
    "or leave the flag out to use the cached official file",
    "clip_checkpoint": "give the path of the CLIP ViT-B/32 weights (ViT-B-32.pt), or leave the "
    "flag out to use the cached official file; `--set model.text_encoder=tiny` (train, "
    "evaluate) runs a random toy text tower instead, for tests and demos only",
}


RETIRED_BASE = (
    "--base is retired: `ssam demo` no longer pre-trains a small SAM, and every command "
    "starts from LiteMedSAM (installed with S-SAM) when no base is named; drop --base, or "
    "name another base with --set model.variant=vit_b --sam-checkpoint FILE"
)


def check_files(**paths: Path | None) -> None:
    """Fail at once, naming the flag and the fix, when a given weights file does not exist:
    ``check_files(adapter=..., sam_checkpoint=...)`` (keys: the flags' parameter names)."""
    for name, path in paths.items():
        if path is None:
            continue
        if not path.is_file():
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {path}: no such file; {_FILE_FIXES[name]}")


def check_model_files(
    adapter: Path | None,
    merged: Path | None,
    sam_checkpoint: Path | None,
    clip_checkpoint: Path | None,
) -> None:
    """Exactly one of --adapter and --merged, and every given weights file exists."""
    if (adapter is None) == (merged is None):
        raise ConfigError("give exactly one of --adapter and --merged")
    check_files(
        adapter=adapter,
        merged=merged,
        sam_checkpoint=sam_checkpoint,
        clip_checkpoint=clip_checkpoint,
    )


def label_list_option():
    """``--label/-l`` of the commands that take ``--data``: a list, repeated or comma-separated."""
    import typer

    return typer.Option(
        None,
        "--label",
        "-l",
        help="label name(s) for --data (repeat, or comma-separate; nnU-Net layout: a subset, "
        "default all; folder layout: exactly one)",
    )


def intensity_option():
    """``--intensity`` of predict and serve (``ssam.cli.choices.IntensityOption``)."""
    import typer

    return typer.Option(
        "trained",
        help="intensity scaling: trained (the adapter's mapping), auto (chosen per input by "
        "its stored type) or a preset",
    )


def build_config(
    config: Path | None,
    data: Path | None,
    label: tuple[str, ...] | None,
    overrides: list[str],
    sam_checkpoint: Path | None = None,
    clip_checkpoint: Path | None = None,
    base: Path | None = None,
    offline: bool = False,
    **fields,
) -> TrainConfig:
    """The training config from a YAML file and/or --data/--label, then --set overrides;
    ``offline``: never download weights. Given weight files are checked first. ``base``: the
    retired ``--base`` option, refused with what replaced it."""
    from ssam.config.train import load_train_config

    if base is not None:
        raise ConfigError(RETIRED_BASE)
    check_files(sam_checkpoint=sam_checkpoint, clip_checkpoint=clip_checkpoint)
    if offline:
        fields["model.allow_download"] = False
    if data is not None:
        overrides = quick_dataset_overrides(data, label) + list(overrides)
    fields["model.sam_checkpoint"] = sam_checkpoint and str(sam_checkpoint.resolve())
    fields["model.clip_checkpoint"] = clip_checkpoint and str(clip_checkpoint.resolve())
    return load_train_config(config, list(overrides), **fields)


def parse_threads(value: str | None) -> int | str | None:
    """``--threads`` -> a positive int, "auto", or None (not given); ConfigError otherwise."""
    if value is None or value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"--threads takes a number of at least 1 or 'auto', not {value!r}")
    return count


def use_threads(value: str | int | None, processes: int | None = None) -> str:
    """Apply ``--threads`` (None: auto) to torch; returns the line saying what was chosen,
    for the caller to print once its inputs and model have loaded (an error stays one line).
    ``processes``: how many processes of one launch share this machine's CPUs (default: as
    the launcher says, ``ssam.threads.launched_locally``)."""
    from ssam.threads import apply_threads

    requested = parse_threads(value) if isinstance(value, str) else value
    return apply_threads(requested, processes)[1]


def build_intensity(
    preset: str, level: float | None, width: float | None
) -> IntensityConfig | None:
    """``trained`` -> None (the adapter's recorded mapping; auto where it records none); else
    the preset (``auto``: chosen per input by its type), with a CT window if given."""
    from ssam.config.data import IntensityConfig

    if preset != "ct" and (level is not None or width is not None):
        raise ConfigError("--window-level/--window-width need --intensity ct")
    if preset == "trained":
        return None
    return IntensityConfig(preset=preset, window_level=level, window_width=width)


def load_predictor(
    adapter: Path | None,
    merged: Path | None,
    sam_checkpoint: Path | None,
    clip_checkpoint: Path | None,
    device: str,
    allow_download: bool,
    **kwargs,
) -> SSAMPredictor:
    """A predictor from an adapter (plus base files) or from a merged checkpoint; says on
    stderr, in one line, which base it runs and where its weights came from."""
    from ssam.inference.predictor import SSAMPredictor

    check_model_files(adapter, merged, sam_checkpoint, clip_checkpoint)
    if merged is not None:
        predictor = SSAMPredictor.from_merged(merged, None, clip_checkpoint, device, **kwargs)
    else:
        predictor = SSAMPredictor.from_adapter(
            adapter, sam_checkpoint, clip_checkpoint, device, allow_download, **kwargs
        )
    print(predictor.model.weights_source, file=sys.stderr)
    return predictor


def load_option_predictor(
    adapter: Path | None,
    merged: Path | None,
    sam_checkpoint: Path | None,
    clip_checkpoint: Path | None,
    device: str,
    offline: bool,
    intensity: str,
    batch_size: int,
    window: tuple[float | None, float | None] = (None, None),
    backend: str = "torch",
) -> SSAMPredictor:
    """The predictor that --adapter/--merged, --offline, --intensity (with a CT ``window`` of
    level and width), --batch-size and --backend describe: the model of ``ssam predict`` and
    ``serve``. An ONNX backend exports on first use (cached beside the model file);
    torch-compile compiles the image encoder at start."""
    from ssam.inference.backends import ONNX_BACKENDS, use_backend

    if backend in ONNX_BACKENDS:  # before the model loads: a missing package fails at once
        require_packages(f"--backend {backend}", ONNX_PACKAGES)
    predictor = load_predictor(
        adapter,
        merged,
        sam_checkpoint,
        clip_checkpoint,
        device,
        not offline,
        intensity=build_intensity(intensity, *window),
        batch_size=batch_size,
    )
    if backend != "torch":
        print(use_backend(predictor, backend, adapter or merged), file=sys.stderr)
    return predictor
