"""How far each serving precision moves a model's masks from fp32 PyTorch's.

Export (and ``footprints check-precision`` for versions already in the store) runs
the ONNX graph through OpenVINO in fp32, bf16 and INT8 on real and synthetic windows,
compares the probabilities with fp32 PyTorch's, and records per precision the
largest difference and the share of mask pixels that flip at 0.5 in the manifest
(``precision_checks``). A precision whose masks flip on more than ``FLIP_LIMIT`` of
the pixels is recorded as refused, and the OpenVINO backend will not serve it.

INT8 is NNCF's post-training quantisation, calibrated on the same windows, with its
accuracy control: layers whose INT8 arithmetic flips masks are put back in fp32 until
the windows' masks agree with fp32's within ``INT8_MAX_DROP``. The record also says how
much faster than fp32 (and bf16, where native) INT8 ran a window on this CPU, which
``--precision auto`` reads. A second gate reads whole labelled tiles the version never
trained on (``--held-out``): served through the tiling engine in INT8 and in fp32,
their pooled IoU may differ by at most ``IOU_LIMIT``. Flips on calibration windows say
the graphs agree; IoU on unseen tiles says the disagreement does not cost buildings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.engines.timings import median_seconds
from service.machine import this_cpu
from service.store.manifest import INT8, INT8_WEIGHTS, ONNX, update
from service.store.repository import ModelStore, file_sha256

FLIP_LIMIT = 0.005  # at most 0.5 % of mask pixels may change side of 0.5
INT8_MAX_DROP = 0.6 * FLIP_LIMIT  # accuracy control's target, with a margin under the gate
IOU_LIMIT = 0.005  # INT8 may move the pooled IoU of held-out tiles by at most this


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


def openvino_outputs(
    onnx_path: Path, names: Sequence[str], inputs: list[np.ndarray], precision: str, model: Any = None
) -> np.ndarray:
    """OpenVINO's probabilities for ``inputs`` (one window per call, as the engine runs
    them) from the graph at ``onnx_path``, or from ``model`` (an INT8 IR) if given."""
    import openvino as ov

    core = ov.Core()
    model = (model or core.read_model(str(onnx_path))).clone()
    model.reshape({n: [1, *x.shape[1:]] for n, x in zip(names, inputs)})
    hint = {"bf16": "bf16", "fp32": "f32", "int8": "f32"}[precision]
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    return np.concatenate([compiled(dict(zip(names, (x[i : i + 1] for x in inputs))))[0] for i in range(len(inputs[0]))])


def _window_seconds(model: Any, names: Sequence[str], inputs: list[np.ndarray], hint: str) -> float:
    """Median seconds of one window (the first parity window) at ``hint``."""
    import openvino as ov

    m = model.clone()
    m.reshape({n: [1, *x.shape[1:]] for n, x in zip(names, inputs)})
    compiled = ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    feed = dict(zip(names, (x[:1] for x in inputs)))
    return median_seconds(lambda: compiled(feed), repeats=5)


def quantize_int8(onnx_path: Path, names: Sequence[str], inputs: list[np.ndarray], fp32: np.ndarray) -> Any:
    """NNCF's INT8 model of the graph, calibrated on ``inputs`` (the parity windows),
    with accuracy control against ``fp32``, OpenVINO fp32's probabilities of them."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(onnx_path))
    # One window a call, any side (the engine reshapes it to each window's).
    model.reshape({n: ov.PartialShape([1, x.shape[1], -1, -1]) for n, x in zip(names, inputs)})
    items = [({n: x[i : i + 1] for n, x in zip(names, inputs)}, fp32[i] > 0.5) for i in range(len(inputs[0]))]

    def agreement(compiled: Any, data: Any) -> float:
        return float(np.mean([np.mean((compiled(x)[0][0] > 0.5) == want) for x, want in data]))

    return nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(items, lambda item: item[0]),
        nncf.Dataset(items, lambda item: item[0]),
        validation_fn=agreement,
        max_drop=INT8_MAX_DROP,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.MIXED,
        subset_size=len(items),
    )


def precision_checks(
    reference: Callable[[list[np.ndarray]], np.ndarray],
    onnx_path: Path,
    names: Sequence[str],
    inputs: list[np.ndarray],
    windows: Sequence[str],
    int8_out: Path | None = None,
) -> dict[str, Any]:
    """``{"openvino-fp32": record, "openvino-bf16": record}`` (and ``"openvino-int8"``,
    its IR written to ``int8_out``, if given) against ``reference``'s
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
    fp32: np.ndarray | None = None
    for precision in ("fp32", "bf16"):
        key = f"openvino-{precision}"
        if precision == "bf16" and not cpu.bf16:
            checks[key] = {"accepted": False, "measured": False, "why": f"{cpu.model} has no native bf16"}
            continue
        got = openvino_outputs(onnx_path, names, inputs, precision)
        fp32 = got if precision == "fp32" else fp32
        checks[key] = {**compare(got, want, windows), "measured": True, "cpu": cpu.key, "openvino": str(ov.get_version())}
    if int8_out is not None and fp32 is not None:
        checks["openvino-int8"] = int8_check(onnx_path, names, inputs, windows, want, fp32, int8_out)
    return checks


def int8_check(
    onnx_path: Path,
    names: Sequence[str],
    inputs: list[np.ndarray],
    windows: Sequence[str],
    want: np.ndarray,
    fp32: np.ndarray,
    out: Path,
) -> dict[str, Any]:
    """Quantise (against ``fp32``, OpenVINO fp32's outputs), write the IR to ``out``
    (``model.int8.xml`` and ``.bin``), and record its masks' agreement with fp32
    PyTorch's (``want``) and its speed against fp32 (and bf16) here."""
    try:
        import nncf  # noqa: F401
        import openvino as ov
    except ModuleNotFoundError as e:
        return {"accepted": False, "measured": False, "why": f"INT8 needs NNCF (the train extra): {e}"}
    cpu = this_cpu()
    int8 = quantize_int8(onnx_path, names, inputs, fp32)
    quantized = sum(op.get_type_name() == "FakeQuantize" for op in int8.get_ordered_ops())
    if not quantized:  # accuracy control put every layer back in fp32: nothing runs in INT8
        return {"accepted": False, "measured": True, "why": "no layer stays INT8 within the gate: every one flips masks"}
    ov.save_model(int8, str(out), compress_to_fp16=False)
    got = openvino_outputs(onnx_path, names, inputs, "int8", model=int8)
    fp32_model = ov.Core().read_model(str(onnx_path))
    seconds = {"int8": _window_seconds(int8, names, inputs, "f32"), "fp32": _window_seconds(fp32_model, names, inputs, "f32")}
    if cpu.bf16:
        seconds["bf16"] = _window_seconds(fp32_model, names, inputs, "bf16")
    return {
        **compare(got, want, windows),
        "measured": True,
        "cpu": cpu.key,
        "openvino": str(ov.get_version()),
        "quantized_inputs": quantized,  # FakeQuantize operations left in the graph
        "window_seconds": seconds,
        "speedup_vs_fp32": seconds["fp32"] / seconds["int8"],
        **({"speedup_vs_bf16": seconds["bf16"] / seconds["int8"]} if "bf16" in seconds else {}),
    }


def torch_reference(model: torch.nn.Module) -> Callable[[list[np.ndarray]], np.ndarray]:
    def run(inputs: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            out: np.ndarray = model(*[torch.from_numpy(x) for x in inputs]).numpy()
        return out

    return run


def held_out_iou(entry: Any, tiles: Sequence[Any]) -> dict[str, Any]:
    """The INT8 record's second gate: ``tiles`` (labelled, never trained on) served in
    OpenVINO fp32 and INT8 as the service serves them (resampled, windows, threshold),
    IoU pooled over them at each, and whether INT8 stays within ``IOU_LIMIT``."""
    from service.engines import open_engine
    from service.tiling.engine import TilingEngine

    from .publish import score

    iou = {p: score(TilingEngine(open_engine(entry, "openvino", precision=p)), list(tiles)).overall.iou for p in ("fp32", "int8")}
    change = iou["int8"] - iou["fp32"]
    record: dict[str, Any] = {
        "held_out_iou": iou,
        "iou_change": change,
        "iou_limit": IOU_LIMIT,
        "held_out_tiles": sorted(t.name for t in tiles),
    }
    if abs(change) > IOU_LIMIT:
        record.update(accepted=False, why=f"held-out IoU moved {change:+.4f} against fp32 (limit {IOU_LIMIT})")
    return record


def check_store_version(
    store: Path,
    name: str,
    version: int | None,
    parity_data: Sequence[Path],
    int8: bool = False,
    held_out: Sequence[Any] = (),
) -> dict[str, Any]:
    """Measure and record ``precision_checks`` for a version already in the store; with
    ``int8``, quantise it too (its IR joins the version's files, sha256-checked), and
    where its masks pass, score the labelled tiles ``held_out`` at fp32 and INT8
    (:func:`held_out_iou`)."""
    from .export import _parity_inputs
    from .networks.model import load_checkpoint

    entry = ModelStore(store).get(name, version)
    model, _ = load_checkpoint(entry.verify("model.pt"))
    model.eval()
    inputs, windows = _parity_inputs(model, parity_data)
    out = entry.folder / INT8 if int8 else None
    checks = precision_checks(torch_reference(model), entry.verify(ONNX), list(model.geometry.input_names), inputs, windows, out)
    files = dict(entry.manifest.files)
    if out is not None and out.is_file():
        files.update({f: file_sha256(entry.folder / f) for f in (INT8, INT8_WEIGHTS)})
    update(entry.folder, precision_checks=checks, files=files)
    record = checks.get("openvino-int8")
    # Scored after the write: the engines open the INT8 graph from the store, by its record.
    if record is not None and record.get("accepted") and held_out:
        checks["openvino-int8"] = {**record, **held_out_iou(ModelStore(store).get(name, entry.version), held_out)}
        update(entry.folder, precision_checks=checks)
    return checks
