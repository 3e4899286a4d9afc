"""``footprints export``: a checkpoint becomes an ONNX graph in the versioned model store.

The store is laid out the way Triton Inference Server reads a model repository::

    model_store/<name>/config.pbtxt          Triton's model configuration
    model_store/<name>/<version>/model.onnx  the graph (raw RGB in, probability out)
    model_store/<name>/<version>/model.pt2   the same graph as a torch.export program (the PyTorch backend's)
    model_store/<name>/<version>/model.pt    the fp16 training checkpoint it came from
    model_store/<name>/<version>/manifest.json  what footprints' service reads
    (a TensorRT ``model.plan`` joins the same version folder on GPU machines)

The graph includes the mean subtraction and the probability head, so every
engine runs the same computation. Export fails unless ONNX Runtime, the exported
program and PyTorch agree within 1e-4 on real windows. The manifest
(:class:`service.store.manifest.Manifest`) records all a server needs besides the
graphs: the window geometry with its default and plan windows
(:mod:`service.tiling.geometry`) and each window's memory, so serving never needs
this package.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from service.errors import InputError
from service.store.manifest import CHECKPOINT, ONNX, PROGRAM, Manifest, Parity, WindowMemory
from service.store.repository import file_sha256, next_version
from service.store.triton import OUTPUT, onnx_config

from .networks.model import SegmentationModel, checkpoint_meta, load_checkpoint, save_checkpoint
from .precision import precision_checks, torch_reference

PARITY_ATOL = 1e-4
# Networks that unpool at argmax positions (SegNet) cannot be held to PARITY_ATOL
# everywhere: where two pooled values are equal up to rounding (flat roofs, flat
# nodata), the runtimes' last-bit differences pick different maxima and the value
# lands one pixel apart. Measured on ONERA windows: up to 1.2e-2 on 0.02-3 % of
# pixels. Such graphs must instead agree on the mask (threshold 0.5) almost
# everywhere and stay close everywhere.
ARGMAX_PARITY = {"max_abs_diff": 0.05, "mask_agreement": 0.999}

OPSET = 17
# Parity windows: a train city and a held-out test city, both rendered on the spot.
# Random noise is no test for a trained network: it calls every noise pixel "not
# building" with probabilities of ~1e-20, so any graph agrees with it (AMLL v3's
# parity on noise was 2.8e-23). A synthetic city has roofs, shadows and roads, so the
# probabilities cross 0.5 and a drift in the graph shows.
PARITY_CITIES = ("ashford", "ironbridge")


def _parity_inputs(model: SegmentationModel, real: Sequence[Path] = ()) -> tuple[list[np.ndarray], list[str]]:
    """One window per parity city, and per real area of the ``real`` roots (the first
    tile of each, its centre), as the service feeds the model: uint8 crops read from a
    GeoTIFF, through the same input preparation (the dual context averaged 2x2).
    Returns the inputs and the windows' names."""
    import rasterio

    from service.engines.base import model_inputs
    from service.rasters import read_window

    from .data.inria import InriaDataset
    from .synthetic import style, synthesize_tile

    side = model.geometry.parity_window()
    context = 2 * side  # read as the dual-resolution context crop; the others use its centre
    crops, names = [], []
    with tempfile.TemporaryDirectory(prefix="footprints-parity-") as tmp:
        for city in PARITY_CITIES:
            tile = synthesize_tile(Path(tmp), style(city), 1, context, 1, seed=0)
            with rasterio.open(tile.image) as src:
                crops.append(src.read())
            names.append(f"synthetic {city}")
    for root in real:
        first: dict[str, Path] = {}
        for t in InriaDataset(root).tiles:
            first.setdefault(t.city, t.image)
        for _, image in sorted(first.items()):
            with rasterio.open(image) as src:  # centred, mirror padded where the tile is smaller
                crops.append(read_window(src, src.height // 2 - side, src.width // 2 - side, context, context, bands=[1, 2, 3]))
            names.append(f"real {image.stem}")
    return model_inputs(model.geometry.split(np.stack(crops), side)), names


def export_onnx(model: SegmentationModel, path: Path) -> None:
    """TorchScript-based exporter (opset 17), dynamic batch, height and width."""
    names = list(model.geometry.input_names)
    side = model.geometry.trace_side()
    examples = tuple(torch.rand(1, 3, side, side) * 255 for _ in names)
    axes = {n: {0: "batch", 2: "height", 3: "width"} for n in names}
    axes[OUTPUT] = {0: "batch", 2: "out_height", 3: "out_width"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            examples,
            str(path),
            input_names=names,
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def export_program(model: SegmentationModel, path: Path) -> None:
    """``torch.export`` program with a dynamic batch and every window side the
    network takes (large: ``min_input + stride * j``; dual: multiples of 16)."""
    from torch.export import Dim

    step, offset, k_min, example_side = model.geometry.program_sides()
    batch = Dim("batch", min=1, max=4096)
    k = Dim("k", min=k_min, max=2048)
    side = step * k + offset
    names = list(model.geometry.input_names)
    module = _Positional(model, len(names))
    examples = tuple(torch.zeros(2, 3, example_side, example_side) for _ in names)
    shapes = {f"x{i}": {0: batch, 2: side, 3: side} for i in range(len(names))}
    with torch.no_grad():
        program = torch.export.export(module, examples, dynamic_shapes=shapes)
    program.example_inputs = None  # dummy zeros: no reason to ship them
    torch.export.save(program, str(path))


class _Positional(nn.Module):
    """``SegmentationModel`` takes ``*rgb``; export wants named positional inputs."""

    def __init__(self, model: SegmentationModel, n_inputs: int) -> None:
        super().__init__()
        self.model = model
        self.n_inputs = n_inputs

    def forward(self, x0: torch.Tensor, x1: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(x0) if x1 is None else self.model(x0, x1)


def fit_window_memory(model: SegmentationModel) -> WindowMemory:
    """The manifest's window memory: the activation bound as a quadratic in the window
    side, fitted at three sides and checked at a fourth (see WindowMemory)."""
    step, offset, _, _ = model.geometry.program_sides()
    sides = [offset + step * j for j in (5, 25, 65, 45)]
    counted = [model.window_bytes(n) for n in sides]
    coefficients = np.polyfit(np.array(sides[:3], float), np.array(counted[:3], float), 2)
    memory = WindowMemory(tuple(float(c) for c in coefficients), tuple(sides[:3]), sides[3])  # type: ignore[arg-type]
    off = abs(memory.bytes(sides[3]) - counted[3]) / counted[3]
    if off > 0.01:
        raise InputError(
            f"window memory of {model.network_name} is not quadratic in the window side ({100 * off:.1f} % off at {sides[3]} px)"
        )
    return memory


def _parity_verdict(model: SegmentationModel, got: np.ndarray, want: np.ndarray, what: str) -> float:
    """Largest |difference|; raises where it breaks the network's parity rule."""
    diff = float(np.abs(got - want).max())
    if not getattr(model.net, "argmax_unpooling", False):
        if diff > PARITY_ATOL:
            raise InputError(f"{what} and PyTorch differ by {diff:.2e} (> {PARITY_ATOL}); export refused")
        return diff
    agree = float(((got >= 0.5) == (want >= 0.5)).mean())
    if diff > ARGMAX_PARITY["max_abs_diff"] or agree < ARGMAX_PARITY["mask_agreement"]:
        raise InputError(
            f"{what} and PyTorch differ by up to {diff:.2e} and agree on {100 * agree:.3f} % of mask pixels "
            f"(argmax-unpooling networks need <= {ARGMAX_PARITY['max_abs_diff']} and >= "
            f"{100 * ARGMAX_PARITY['mask_agreement']:.1f} %); export refused"
        )
    return diff


def check_parity(model: SegmentationModel, onnx_path: Path, inputs: list[np.ndarray]) -> tuple[float, float]:
    """Largest |ONNX Runtime - PyTorch| on ``inputs`` and the share of their pixels that
    PyTorch calls building (a check on windows of one class alone proves little);
    raises when the difference is above 1e-4 (argmax-unpooling networks: ARGMAX_PARITY)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT], dict(zip(model.geometry.input_names, inputs)))[0]
    with torch.no_grad():
        want = model(*[torch.from_numpy(x) for x in inputs]).numpy()
    if got.shape != want.shape:
        raise InputError(f"{onnx_path}: ONNX output shape {got.shape} differs from PyTorch's {want.shape}")
    return _parity_verdict(model, got, want, f"{onnx_path}: ONNX Runtime"), float((want > 0.5).mean())


def check_program_parity(model: SegmentationModel, path: Path, inputs: list[np.ndarray]) -> float:
    """Largest |exported program - PyTorch| on ``inputs``, loaded back from ``path`` as
    the service loads it; raises above 1e-4 (argmax-unpooling networks: ARGMAX_PARITY)."""
    program = torch.export.load(str(path)).module()
    xs = [torch.from_numpy(x) for x in inputs]
    with torch.no_grad():
        got, want = program(*xs).numpy(), model(*xs).numpy()
    return _parity_verdict(model, got, want, f"{path}: the exported program")


def export(
    checkpoint: Path, store: Path, name: str, version: int | None = None, parity_data: Sequence[Path] = ()
) -> dict[str, Any]:
    """Export ``checkpoint`` as ``store/name/version``; returns the manifest written.
    ``parity_data``: real imagery roots whose windows join the parity check."""
    model, meta = load_checkpoint(checkpoint)
    # The store keeps fp16 weights; the graph is exported from those same (rounded)
    # weights so that model.pt and model.onnx are one model.
    with torch.no_grad():
        for t in model.net.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    version = version or next_version(store, name)
    folder = store / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / ONNX
    tmp = folder / f"{ONNX}.tmp"
    program_path, program_tmp = folder / PROGRAM, folder / f"tmp-{PROGRAM}"  # torch wants the .pt2 suffix
    export_onnx(model, tmp)
    export_program(model, program_tmp)
    try:
        inputs, parity_names = _parity_inputs(model, parity_data)
        diff, share = check_parity(model, tmp, inputs)
        program_diff = check_program_parity(model, program_tmp, inputs)
    except InputError:
        tmp.unlink(missing_ok=True)
        program_tmp.unlink(missing_ok=True)
        raise
    checks = precision_checks(torch_reference(model), tmp, list(model.geometry.input_names), inputs, parity_names)
    tmp.replace(onnx_path)
    program_tmp.replace(program_path)
    pt = folder / CHECKPOINT
    if Path(checkpoint).resolve() != pt.resolve():
        save_checkpoint(pt, model, half=True, **checkpoint_meta(meta))
    manifest = Manifest(
        name=name,
        version=version,
        network=model.network_name,
        network_args=model.network_args,
        geometry=model.geometry,
        window_memory=fit_window_memory(model),
        mean_rgb=tuple(model.mean.flatten().tolist()),
        std_rgb=tuple(model.std_rgb) if model.std_rgb else None,
        inputs=model.geometry.input_names,
        output=OUTPUT,
        files={p.name: file_sha256(p) for p in (onnx_path, program_path, pt)},
        metrics=meta.get("metrics", {}),
        training={k: meta.get(k) for k in ("code_version", "step", "data")},
        parity=Parity(model.geometry.parity_window(), tuple(parity_names), diff, program_diff, share),
        precision_checks=checks,
        threshold=float(meta.get("threshold", 0.5)),  # publish --loao chose it on held-out runs
    )
    manifest.write(folder)
    (store / name / "config.pbtxt").write_text(onnx_config(name, model.geometry))
    return manifest.to_json()


def remove_version(store: Path, name: str, version: int) -> None:
    """Roll back: a version is one folder."""
    shutil.rmtree(store / name / str(version))
