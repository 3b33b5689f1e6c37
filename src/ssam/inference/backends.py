"""Where the two model halves run: PyTorch (eager or compiled), or ONNX Runtime on an export
cached beside the model.

``torch-compile``: the adapter merged into the model in place (W' folded into plain layers) and
the image encoder compiled by TorchInductor (``torch.compile``) with its weights frozen as
constants (``freezing``: folded and pre-packed for oneDNN on a CPU). Warm-up calls at start
pay the compile (LiteMedSAM at 256 px on two cores: 37-59 s on first compiles, 12-18 s
once TorchInductor's on-disk cache holds the graphs), so it pays off over many images or
slices. The compiled graph is specialised to the input size and the CPU thread count (another
count recompiles). It needs a C++ compiler on a CPU (Triton on a GPU); the mask decoder stays
eager (it runs per image for the asked labels, a small share of the time).

``use_backend(predictor, "onnx", adapter_file)`` makes ``SSAMPredictor.encode`` and
``decode_logits`` run in onnxruntime (CPU); everything around them (intensity mapping,
resizing, padding, restoring to the original size, label maps) stays the same code. Label
tokens still come from the torch text path (CLIP + text affine) and go to the decoder as its
``label_tokens`` input, so any label name works.

The export (``ssam.inference.export``, adapter merged, ``tokens_as_input``) is made on first
use and cached in ``onnx-cache/`` beside the adapter (or merged checkpoint), else in the user
cache when that folder is read-only, one folder per key: the adapter's SHA-256, the base
checkpoint's SHA-256, the input size, the weight type and ``EXPORT_VERSION``. A folder is
written under a temporary name and renamed when complete (with ``backend.json``, its record,
written last), so a crash or a concurrent run never leaves half an export in use.

``onnx-int8``: the image encoder's MatMul/Gemm weights quantised to int8 per tensor
(``quantize_dynamic``: weights stored int8, activations quantised on the fly; products of two
activations, i.e. attention, stay float). Convolutions (patch embedding, neck) stay float:
dynamic ConvInteger is slower than float Conv in onnxruntime's CPU provider and they are a
small share of the encoder's operations. The mask decoder is float in both.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import torch

from ssam.atomic import current_umask
from ssam.errors import ONNX_PACKAGES, ConfigError, require_packages
from ssam.weights import file_sha256, get_cache_dir

if TYPE_CHECKING:
    from ssam.inference.predictor import SSAMPredictor
    from ssam.model import SSAM

Backend = Literal["torch", "torch-compile", "onnx", "onnx-int8"]
BACKENDS: tuple[str, ...] = get_args(Backend)
ONNX_BACKENDS = tuple(b for b in BACKENDS if b.startswith("onnx"))
COMPILE_OPTIONS = {"freezing": True}  # TorchInductor: weights are constants of the graph
EXPORT_VERSION = 1  # part of every cache key: a changed export never reuses an old folder
RECORD = "backend.json"  # written last: a folder without it is not a finished export
INT8_OPS = ("MatMul", "Gemm")


class OnnxRuntimeModel:
    """The predictor's two compute points on onnxruntime sessions (CPU provider).

    Args:
        folder: a finished export (``prepare_export``).
        threads: intra-op threads; default ``torch.get_num_threads()`` (what ``--threads``
            set), so both backends use the same cores.
    """

    def __init__(self, folder: Path | str, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.folder = Path(folder)
        config = json.loads((self.folder / "export.json").read_text())
        self.record = json.loads((self.folder / RECORD).read_text())
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CPUExecutionProvider"]

        def session(part: str):
            path = self.folder / config[part]["file"]
            return ort.InferenceSession(str(path), options, providers=providers)

        self.encoder, self.decoder = session("image_encoder"), session("mask_decoder")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) normalised -> embeddings (B, C, h, w) float32."""
        batch = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.encoder.run(None, {"images": batch})[0])

    def decode_logits(self, embedding: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """One image's embedding (C, h, w) + tokens (L, 1, C) -> logits (L, S, S) float32."""
        feeds = {
            "image_embeddings": np.ascontiguousarray(embedding[None].cpu().numpy(), np.float32),
            "label_tokens": np.ascontiguousarray(tokens.detach().cpu().numpy(), np.float32),
        }
        return torch.from_numpy(self.decoder.run(None, feeds)[0])


def compute_cache_name(weights: dict[str, str], image_size: int, int8: bool) -> str:
    """Folder name from the weights' SHA-256s (e.g. {"adapter": ..., "base": ...}), the input
    size and the weight type: ``v1-adapter<16 hex>-base<16 hex>-s256[-int8]``."""
    parts = [f"v{EXPORT_VERSION}", *(f"{k}{sha[:16]}" for k, sha in weights.items())]
    return "-".join([*parts, f"s{image_size}", *(["int8"] if int8 else [])])


def choose_cache_root(source: Path) -> Path:
    """``onnx-cache/`` beside ``source``; the user cache's ``onnx/`` when that folder is not
    writable (a shared, read-only model folder)."""
    beside = source.resolve().parent
    if os.access(beside, os.W_OK | os.X_OK):
        return beside / "onnx-cache"
    return get_cache_dir() / "onnx"


def is_finished(folder: Path, record: dict) -> bool:
    """Whether ``folder`` holds a finished export made for ``record`` (same key, all files)."""
    try:
        found = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return False
    same = all(found.get(k) == record[k] for k in ("key", "weights_sha256", "int8"))
    files = found.get("files") or ()
    return same and bool(files) and all((folder / f).is_file() for f in files)


def quantize_encoder(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the encoder's MatMul/Gemm weights (see the module doc)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    quiet = _DropPreprocessAdvice()
    root.addFilter(quiet)  # its advice to pre-process is logged on the root logger, every time
    try:
        quantize_dynamic(
            source, target, op_types_to_quantize=list(INT8_OPS), weight_type=QuantType.QInt8
        )
    finally:
        root.removeFilter(quiet)


class _DropPreprocessAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def _write_export(model: SSAM, folder: Path, label: str, record: dict) -> None:
    """The export with ``record`` into the new folder ``folder`` (not yet in use)."""
    from ssam.inference.export import export_onnx

    export_onnx(model, folder, [label], tokens_as_input=True)
    config_path = folder / "export.json"
    config = json.loads(config_path.read_text())
    if record["int8"]:
        float_path = folder / config["image_encoder"]["file"]
        int8_path = folder / "image_encoder_int8.onnx"
        quantize_encoder(float_path, int8_path)
        float_path.unlink()
        config["image_encoder"]["file"] = int8_path.name
        config["image_encoder"]["weights"] = f"int8, dynamic, {'/'.join(INT8_OPS)} only"
        config_path.write_text(json.dumps(config, indent=2))
    files = [config["image_encoder"]["file"], config["mask_decoder"]["file"], "export.json"]
    (folder / RECORD).write_text(json.dumps({**record, "files": files}, indent=2))


def prepare_export(model: SSAM, root: Path, record: dict, label: str) -> Path:
    """The finished export folder ``root/record["key"]``: reused when there, else written
    under a temporary name and renamed into place (a run that loses a race uses the winner's).

    ``record``: the cache key and what it is made of (``key`` names the folder; ``int8``).
    """
    folder = root / record["key"]
    if is_finished(folder, record):
        return folder
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=root, prefix=f".{record['key']}.", suffix=".tmp"))
    try:
        _write_export(model, work, label, record)
        os.chmod(work, 0o777 & ~current_umask())  # mkdtemp's folder is private (0700)
        if folder.exists() and not is_finished(folder, record):
            shutil.rmtree(folder)  # not ours and unfinished: made by hand or another version
        try:
            os.replace(work, folder)  # atomic; fails if another run has just finished it
        except OSError:
            if not is_finished(folder, record):
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def describe_weights(predictor: SSAMPredictor, source: Path) -> dict[str, str]:
    """What the exported graphs depend on, by SHA-256: the adapter and its base checkpoint,
    or a merged checkpoint alone."""
    base = predictor.model.base_info.base_sha256
    if base is None:
        raise ConfigError("the ONNX backends need a model loaded from a checkpoint file")
    own = file_sha256(source)
    if own == base:
        return {"merged": base}  # a merged checkpoint: its SHA-256 covers every weight
    return {"adapter": own, "base": base}


def compile_encoder(predictor: SSAMPredictor) -> float:
    """Merge the adapter into ``predictor``'s model and compile its image encoder, in place
    (see the module doc). Warm-up encodes compile it at start: one image, then two when the
    predictor batches slices, so an encoder that sees whole batches (a ViT, TinyViT on a GPU)
    gets its batch-size-dynamic graph now rather than mid-run. Returns the seconds that took.
    The compiled method is set on the encoder instance, so compiling twice does nothing. If
    the compile fails the eager method comes back; the model stays merged (the same outputs)."""
    from ssam.inference.merge import merge_adapted_weights
    from ssam.sam.families import get_family

    model = predictor.model
    encoder = model.image_encoder
    name = get_family(model.variant).compiled_method
    if name in vars(encoder):
        return 0.0
    merge_adapted_weights(model)
    setattr(encoder, name, torch.compile(getattr(encoder, name), options=COMPILE_OPTIONS))
    size = predictor.image_size
    start = time.perf_counter()
    try:
        for batch in sorted({1, min(2, predictor.batch_size)}):
            predictor.encode(torch.zeros(batch, 3, size, size))
    except Exception as err:  # the compiler's own errors vary: no C++ compiler, no Triton
        delattr(encoder, name)  # the class's eager method again
        cause = getattr(err, "inner_exception", None) or err  # TorchDynamo wraps the compiler's
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise ConfigError(
            f"--backend torch-compile could not compile the image encoder "
            f"({type(cause).__name__}: {reason}); TorchInductor needs a C++ compiler on a CPU "
            "(Triton on a GPU): use --backend torch"
        ) from err
    return time.perf_counter() - start


def use_backend(predictor: SSAMPredictor, backend: str, source: Path | str | None) -> str:
    """Run ``predictor``'s encoder and decoder on ``backend``; returns a line saying so.

    ``source``: the adapter file (or merged checkpoint) the predictor was loaded from; the
    export is cached beside it. "torch" leaves the predictor as it is.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    if backend == "torch":
        predictor.runtime = None
        return "backend: torch"
    if backend == "torch-compile":
        predictor.runtime = None
        seconds = compile_encoder(predictor)
        return (
            f"backend: torch-compile (adapter merged, image encoder compiled by TorchInductor "
            f"in {seconds:.0f} s; {torch.get_num_threads()} thread(s))"
        )
    if source is None:
        raise ConfigError(
            f"--backend {backend} needs --adapter or --merged (the export is keyed "
            "by its file); the untrained baseline runs with --backend torch"
        )
    if predictor.model.device.type != "cpu":
        raise ConfigError(f"--backend {backend} runs on the CPU: use --device cpu")
    require_packages(f"--backend {backend}", ONNX_PACKAGES)
    source = Path(source)
    int8 = backend == "onnx-int8"
    weights = describe_weights(predictor, source)
    size = predictor.image_size
    key = compute_cache_name(weights, size, int8)
    record = {"key": key, "weights_sha256": weights, "image_size": size, "int8": int8}
    label = (predictor.trained_labels or ("object",))[0]
    folder = prepare_export(predictor.model, choose_cache_root(source), record, label)
    predictor.runtime = OnnxRuntimeModel(folder)
    return f"backend: {backend} (onnxruntime on {torch.get_num_threads()} thread(s); {folder})"
