"""How far each serving precision moves a model's masks from fp32 PyTorch's.

Export (and ``footprints check-precision`` for versions already in the store) runs
the ONNX graph through OpenVINO in fp32 and in bf16 on real and synthetic windows,
compares the probabilities with fp32 PyTorch's, and records per precision the
largest difference and the share of mask pixels that flip at 0.5 in the manifest
(``precision_checks``). A precision whose masks flip on more than ``FLIP_LIMIT`` of
the pixels is recorded as refused, and the OpenVINO backend will not serve it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.machine import this_cpu
from service.store.manifest import ONNX, update
from service.store.repository import ModelStore

FLIP_LIMIT = 0.005  # at most 0.5 % of mask pixels may change side of 0.5


def compare(got: np.ndarray, want: np.ndarray, windows: Sequence[str]) -> dict[str, Any]:
    """The agreement record of ``got`` against fp32 ``want`` (probabilities)."""
    flips = float(np.mean((got > 0.5) != (want > 0.5)))
    return {
        "max_abs_diff": float(np.abs(got - want).max()),
        "mask_flip_share": flips,
        "limit": FLIP_LIMIT,
        "accepted": flips <= FLIP_LIMIT,
        "windows": list(windows),
    }


def openvino_outputs(onnx_path: Path, names: Sequence[str], inputs: list[np.ndarray], precision: str) -> np.ndarray:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(onnx_path))
    model.reshape({n: list(x.shape) for n, x in zip(names, inputs)})
    hint = {"bf16": "bf16", "fp32": "f32"}[precision]
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    out: np.ndarray = compiled(dict(zip(names, inputs)))[0]
    return out


def precision_checks(
    reference: Callable[[list[np.ndarray]], np.ndarray],
    onnx_path: Path,
    names: Sequence[str],
    inputs: list[np.ndarray],
    windows: Sequence[str],
) -> dict[str, Any]:
    """``{"openvino-fp32": record, "openvino-bf16": record}`` against ``reference``'s
    fp32 probabilities. bf16 is measured only on a CPU that computes it natively
    (elsewhere OpenVINO would quietly run fp32 and the check would prove nothing).
    Without OpenVINO (a GPU image), nothing is recorded: its engines then serve the
    version in fp32 only, until ``footprints check-precision`` records the checks."""
    try:
        import openvino as ov
    except ModuleNotFoundError:
        return {}

    want = reference(inputs)
    cpu = this_cpu()
    checks: dict[str, Any] = {}
    for precision in ("fp32", "bf16"):
        key = f"openvino-{precision}"
        if precision == "bf16" and not cpu.bf16:
            checks[key] = {"accepted": False, "measured": False, "why": f"{cpu.model} has no native bf16"}
            continue
        got = openvino_outputs(onnx_path, names, inputs, precision)
        checks[key] = {**compare(got, want, windows), "measured": True, "cpu": cpu.key, "openvino": str(ov.get_version())}
    return checks


def torch_reference(model: torch.nn.Module) -> Callable[[list[np.ndarray]], np.ndarray]:
    def run(inputs: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = model(*[torch.from_numpy(x) for x in inputs]).numpy()
        return out

    return run


def check_store_version(store: Path, name: str, version: int | None, parity_data: Sequence[Path]) -> dict[str, Any]:
    """Measure and record ``precision_checks`` for a version already in the store."""
    from .export import _parity_inputs
    from .networks.model import load_checkpoint

    entry = ModelStore(store).get(name, version)
    model, _ = load_checkpoint(entry.verify("model.pt"))
    model.eval()
    inputs, windows = _parity_inputs(model, parity_data)
    checks = precision_checks(torch_reference(model), entry.verify(ONNX), list(model.geometry.input_names), inputs, windows)
    update(entry.folder, precision_checks=checks)
    return checks
