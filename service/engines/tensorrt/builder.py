"""``footprints build-engine``: a store version's ONNX graph compiled by TensorRT for
this GPU, with the profiles of :mod:`.profiles`, a timing cache kept in the store, and
a parity check against the ONNX graph recorded in the manifest (as export does for
ONNX). Writes ``<name>/<v>/model.<sm>.trt<X.Y>.<precision>.plan``, its manifest entry,
and Triton's ``<name>_tensorrt/`` model folder pointing at it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from service.engines.gpu import require_gpu
from service.engines.tensorrt.files import plan_name, tag
from service.engines.tensorrt.profiles import Profile, profiles
from service.errors import InputError
from service.store.manifest import ONNX, update
from service.store.repository import ModelEntry, ModelStore, file_sha256
from service.store.triton import TENSORRT_SUFFIX, tensorrt_config

PRECISIONS = ("fp16", "fp32")


def _tensorrt():
    try:
        import tensorrt as trt
    except ModuleNotFoundError:
        raise InputError("TensorRT is not installed: pip install '.[gpu]' on a machine with an NVIDIA GPU") from None
    return trt


def parity_windows(entry: ModelEntry, images: list[Path], side: int, count: int = 4) -> tuple[list[np.ndarray], str]:
    """uint8 window crops to compare the engine with the ONNX graph: the centre windows of
    ``images`` (real tiles) when given, else random ones (said in the record)."""
    geometry = entry.geometry
    if not images:
        return geometry.random_crops(count, side), "random windows (no --parity-images given)"
    from service.rasters import RGBRaster

    rasters = [RGBRaster(path) for path in images[:count]]
    try:
        crops = geometry.centre_crops([r.read for r in rasters], [(r.height, r.width) for r in rasters], side)
    finally:
        for r in rasters:
            r.close()
    return crops, ", ".join(p.name for p in images[:count])


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
    profs = profiles(entry.geometry, max_batch, max_window)
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
        for input_name in entry.geometry.input_names:
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
    engines = {**entry.manifest.tensorrt_engines, tag(gpu.sm, trt.__version__, precision): record}
    update(entry.folder, tensorrt_engines=engines)
    _triton_folder(store.root, entry, engines, max_batch)
    return record


def _parity(entry: ModelEntry, plan: Path, profs: list[Profile], images: list[Path], precision: str) -> dict:
    """The engine against the ONNX graph (ONNX Runtime, fp32, CPU) on the same windows."""
    from service.engines.onnxruntime import OnnxRuntimeEngine
    from service.engines.tensorrt.runtime import TensorRTEngine

    side = profs[0].opt_side
    crops, source = parity_windows(entry, images, side)
    reference = OnnxRuntimeEngine(entry).infer(crops)
    engine = TensorRTEngine(entry, plan, profs, precision)
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
    (folder / "config.pbtxt").write_text(tensorrt_config(entry.name, entry.geometry, max_batch, by_cc))
