"""OpenVINO on the CPU: the store's ONNX graph compiled per window shape, in fp32, in
bf16 where the CPU computes bf16 natively (AVX512-BF16, AMX), or the version's INT8
graph (NNCF's, ``model.int8.xml``), each only where ``footprints check-precision``
found its masks agree with fp32 PyTorch's (``manifest["precision_checks"]``)."""

from __future__ import annotations

import functools
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from service.engines.base import Bundle, Engine, model_inputs
from service.engines.precision import choose_precision
from service.errors import InputError
from service.machine import available_cores, this_cpu
from service.store.manifest import INT8, INT8_WEIGHTS, ONNX

# Compiled shapes kept: a tile's windows share one shape, batches add one or two more;
# each compiled shape holds its own activation buffers, so keep few.
COMPILED_SHAPES = 3


def precision_check(entry: Bundle, engine: str, precision: str) -> dict[str, Any] | None:
    """Export's record of ``engine`` at ``precision`` against fp32 PyTorch, if any."""
    record: dict[str, Any] | None = entry.manifest.precision_checks.get(f"{engine}-{precision}")
    return record


def checked_precision(entry: Bundle, requested: str) -> tuple[str, str]:
    """(precision, why) for OpenVINO on this CPU. ``auto`` takes INT8 where the version's
    INT8 graph passed its gate and was measured faster than the alternative on this very
    CPU, else bf16 where the CPU has it and the bf16 masks passed theirs, else fp32. A
    forced precision that failed (or was never checked) is refused with the reason."""
    cpu = this_cpu()
    if requested in ("int8", "auto"):
        passed, faster, why = _int8_verdict(entry, cpu.key, cpu.bf16)
        if passed and (faster or requested == "int8"):
            return "int8", why
        if requested == "int8":
            raise InputError(f"model {entry.name} v{entry.version} in INT8: {why}; use --precision fp32")
    precision = choose_precision(requested, cpu)
    if precision == "fp32":
        return "fp32", "forced" if requested == "fp32" else f"no native bf16 on {cpu.model}"
    record = precision_check(entry, "openvino", "bf16")
    if record is None:
        problem = "was never checked against fp32 (re-run `footprints check-precision`)"
    elif not record.get("measured", True):
        # Checked on a CPU without native bf16: nothing was measured, so nothing passed.
        problem = f"was never measured ({record.get('why', 'no native bf16 where it was checked')}; re-run `footprints check-precision` here)"
    elif not record["accepted"]:
        problem = f"flips {record['mask_flip_share']:.2%} of mask pixels against fp32 (limit {record['limit']:.1%})"
    else:
        return "bf16", f"native bf16; masks agree with fp32 on {1 - record['mask_flip_share']:.3%} of pixels"
    if requested == "bf16":
        raise InputError(f"model {entry.name} v{entry.version} in bf16 {problem}; use --precision fp32")
    return "fp32", f"bf16 {problem}"


def _int8_verdict(entry: Bundle, cpu_key: str, bf16: bool) -> tuple[bool, bool, str]:
    """Whether the version's INT8 graph passed its gate, whether it was measured faster
    here than what ``auto`` would serve otherwise, and why."""
    record = precision_check(entry, "openvino", "int8")
    if record is None:
        return False, False, "no INT8 graph (`footprints check-precision --int8` makes and checks one)"
    if not record["accepted"]:
        why = (
            record.get("why")
            or f"flips {record['mask_flip_share']:.2%} of mask pixels against fp32 (limit {record['limit']:.1%})"
        )
        return False, False, why
    agree = f"masks agree with fp32 on {1 - record['mask_flip_share']:.3%} of pixels"
    if record.get("cpu") != cpu_key:
        return True, False, f"INT8 {agree}; its speed was measured on another CPU ({record.get('cpu')})"
    rival, speedup = ("bf16", record.get("speedup_vs_bf16", 0.0)) if bf16 else ("fp32", record.get("speedup_vs_fp32", 0.0))
    return True, speedup > 1.0, f"INT8 {agree}; {speedup:.2f}x {rival}'s speed here"


@functools.lru_cache(maxsize=32)
def _operations(path: Path, sha256: str) -> frozenset[str]:
    import openvino as ov

    return frozenset(op.get_type_name() for op in ov.Core().read_model(str(path)).get_ordered_ops())


def graph_operations(entry: Bundle) -> frozenset[str]:
    """The OpenVINO operation types of the version's graph (sha256-checked, read once)."""
    return _operations(entry.verify(ONNX), entry.manifest.files[ONNX])


def compiled_cache() -> Path:
    """Where OpenVINO keeps compiled models, so that a restart compiles nothing."""
    from service.engines.timings import cache_dir

    return cache_dir() / "openvino"


class OpenVinoEngine(Engine):
    """Runs ``model.onnx`` of a store version (sha256-checked) through OpenVINO's CPU plugin."""

    engine = "openvino"

    def __init__(self, entry: Bundle, precision: str = "auto", threads: int | None = None) -> None:
        import openvino as ov

        chosen, _ = checked_precision(entry, precision)
        super().__init__(**Engine.describe(entry, "cpu", chosen))
        self.core = ov.Core()
        self.core.set_property({"CACHE_DIR": str(compiled_cache())})
        if self.precision == "int8":
            entry.verify(INT8_WEIGHTS)
            self.model = self.core.read_model(str(entry.verify(INT8)))
        else:
            self.model = self.core.read_model(str(entry.verify(ONNX)))
        self.config = {
            # INT8 layers run in INT8 whatever the hint; the hint is for the rest.
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads or available_cores(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._compiled: OrderedDict[tuple, Any] = OrderedDict()
        self._inputs = list(entry.manifest.inputs)

    def _request(self, shapes: tuple) -> Any:
        """An infer request compiled for these exact input shapes (static shapes let the
        plugin plan memory and pick kernels once)."""
        if shapes in self._compiled:
            self._compiled.move_to_end(shapes)
            return self._compiled[shapes]
        model = self.model.clone()
        model.reshape({name: list(shape) for name, shape in zip(self._inputs, shapes)})
        request = self.core.compile_model(model, "CPU", self.config).create_infer_request()
        self._compiled[shapes] = request
        while len(self._compiled) > COMPILED_SHAPES:
            self._compiled.popitem(last=False)
        return request

    def infer(self, inputs: list[np.ndarray]) -> np.ndarray:
        # One window per call: the plugin's kernels for a batch of two give other
        # last bits than for one (measured, up to 4e-6), and a window's mask must not
        # depend on which tiles' windows it was batched with. A CPU gains nothing from
        # larger batches here anyway (every measurement of two per call was slower).
        xs = model_inputs(inputs)
        request = self._request(tuple((1, *x.shape[1:]) for x in xs))
        side = self.geometry.output_side(xs[0].shape[-1])
        out = np.empty((len(xs[0]), side, side), np.float32)
        for i in range(len(xs[0])):
            request.infer(dict(zip(self._inputs, (x[i : i + 1] for x in xs))))
            out[i] = request.get_output_tensor(0).data[0, 0]
        return out

    def close(self) -> None:
        self._compiled.clear()
