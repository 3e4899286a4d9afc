"""``footprints build-engine``: a store version's ONNX graph compiled by TensorRT for
this GPU, with the profiles of :mod:`.profiles`, a timing cache kept in the store, and
a parity check against the ONNX graph recorded in the manifest (as export does for
ONNX). Writes ``<name>/<v>/model.<sm>.trt<X.Y>.<precision>.plan``, its manifest entry,
and Triton's ``<name>_tensorrt/`` model folder pointing at it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..gpu import require_gpu
from ..store import MANIFEST, ONNX, ModelEntry, ModelStore, file_sha256
from ..triton import TENSORRT_SUFFIX, input_names, tensorrt_config
from .engines import plan_name, tag
from .profiles import Profile, profiles

PRECISIONS = ("fp16", "fp32")


def _tensorrt():
    try:
        import tensorrt as trt
    except ModuleNotFoundError:
        raise InputError("TensorRT is not installed: pip install '.[gpu]' on a machine with an NVIDIA GPU") from None
    return trt


def parity_windows(entry: ModelEntry, images: list[Path], side: int, count: int = 4) -> tuple[list[np.ndarray], str]:
    """uint8 window crops to compare the engine with the ONNX graph: cut from
    ``images`` (real tiles) when given, else random (said in the record)."""
    rng = np.random.default_rng(0)
    ctx = 2 * side if entry.mode == "dual" else side
    if images:
        from ..geoio import RGBRaster

        crops = []
        for path in images[:count]:
            with RGBRaster(path) as src:
                crops.append(src.read(max(0, src.height // 2 - ctx // 2), max(0, src.width // 2 - ctx // 2), ctx))
        source = ", ".join(p.name for p in images[:count])
    else:
        crops = [rng.integers(0, 256, (3, ctx, ctx), dtype=np.uint8) for _ in range(count)]
        source = "random windows (no --parity-images given)"
    stack = np.stack(crops)
    if entry.mode == "dual":
        lo = side // 2
        return [np.ascontiguousarray(stack[:, :, lo : lo + side, lo : lo + side]), stack], source
    return [stack], source


def build_engine(
    store_root: Path,
    model: str,
    precision: str = "fp16",
    max_batch: int = 4,
    max_window: int = 2688,
    parity_images: list[Path] | None = None,
    workspace_gb: float = 8.0,
) -> dict:
    """Build, check and record the engine; returns its manifest record."""
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r}: TensorRT engines are built in {' or '.join(PRECISIONS)}")
    gpu = require_gpu("building a TensorRT engine")
    trt = _tensorrt()
    store = ModelStore(store_root)
    entry = store.find(model)
    profs = profiles(entry.spec, max_batch, max_window)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(entry.verify(ONNX).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"TensorRT cannot parse {entry.name} v{entry.version}'s ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
    if precision == "fp16":
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise InputError(
                f"TensorRT {trt.__version__} has no FP16 builder flag (strongly typed networks only); use --precision fp32"
            )
        config.set_flag(trt.BuilderFlag.FP16)
    # The timing cache: kernel timings of earlier builds on this GPU and TensorRT, so a
    # rebuild (another version, other profiles) skips the measuring it already did.
    cache_path = store.root / f".tensorrt-timing.{gpu.sm}.trt{trt.__version__}.cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    for p in profs:
        prof = builder.create_optimization_profile()
        for input_name in input_names(entry.mode):
            prof.set_shape(input_name, *p.shapes())
        config.add_optimization_profile(prof)
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise InputError(f"TensorRT could not build {entry.name} v{entry.version} (see its log above)")
    seconds = time.perf_counter() - t0
    cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))
    path = entry.folder / plan_name(gpu.sm, trt.__version__, precision)
    partial = path.with_suffix(".partial")
    partial.write_bytes(memoryview(plan))
    os.replace(partial, path)  # an engine file is whole or absent

    record = {
        "file": path.name,
        "sha256": file_sha256(path),
        "gpu": gpu.name,
        "compute_capability": gpu.cc,
        "tensorrt": trt.__version__,
        "precision": precision,
        "profiles": [p.to_manifest() for p in profs],
        "build_seconds": round(seconds, 1),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    record["parity"] = _parity(entry, path, profs, parity_images or [], precision)
    manifest = json.loads((entry.folder / MANIFEST).read_text())
    manifest.setdefault("tensorrt_engines", {})[tag(gpu.sm, trt.__version__, precision)] = record
    (entry.folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    _triton_folder(store.root, entry, manifest["tensorrt_engines"], max_batch)
    return record


def _parity(entry: ModelEntry, plan: Path, profs: list[Profile], images: list[Path], precision: str) -> dict:
    """The engine against the ONNX graph (ONNX Runtime, fp32, CPU) on the same windows."""
    from ..backends.onnxruntime_backend import OnnxRuntimeBackend
    from ..backends.tensorrt_backend import TensorRTBackend

    side = profs[0].opt_side
    crops, source = parity_windows(entry, images, side)
    reference = OnnxRuntimeBackend(entry).infer(crops)
    engine = TensorRTBackend(entry, plan, profs, precision)
    try:
        got = engine.infer(crops)
    finally:
        engine.close()
    agree = float(np.mean((got >= 0.5) == (reference >= 0.5)))
    return {
        "window_px": side,
        "windows": len(crops[0]),
        "source": source,
        "max_abs_diff": float(np.abs(got - reference).max()),
        "mask_agreement": agree,
    }


def _triton_folder(root: Path, entry: ModelEntry, records: dict[str, dict], max_batch: int) -> None:
    """``<name>_tensorrt/config.pbtxt`` and ``<name>_tensorrt/<v>/`` linking the plans:
    the same store mounted into Triton serves the engines too."""
    folder = root / f"{entry.name}{TENSORRT_SUFFIX}"
    version = folder / str(entry.version)
    version.mkdir(parents=True, exist_ok=True)
    by_cc: dict[str, str] = {}
    for r in records.values():
        link = version / r["file"]
        if not link.exists():
            link.symlink_to(os.path.relpath(entry.folder / r["file"], version))
        if r["precision"] == "fp16" or r["compute_capability"] not in by_cc:
            by_cc[r["compute_capability"]] = r["file"]
    (folder / "config.pbtxt").write_text(tensorrt_config(entry.name, entry.mode, max_batch, by_cc))
