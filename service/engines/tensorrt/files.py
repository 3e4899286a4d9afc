"""Which engine file runs here. A TensorRT plan runs only on the GPU architecture and
the TensorRT version it was built with, so each is named and recorded by both:
``model.sm90.trt11.4.fp16.plan`` and the manifest's ``tensorrt_engines`` entry."""

from __future__ import annotations

from service.errors import InputError


def tag(sm: str, trt_version: str, precision: str) -> str:
    """``sm90.trt11.4.fp16``: architecture, TensorRT major.minor, precision."""
    major_minor = ".".join(trt_version.split(".")[:2])
    return f"{sm}.trt{major_minor}.{precision}"


def plan_name(sm: str, trt_version: str, precision: str) -> str:
    return f"model.{tag(sm, trt_version, precision)}.plan"


def pick_engine(records: dict[str, dict], sm: str, trt_version: str, precision: str, model: str) -> dict:
    """The record of the engine built for this GPU and TensorRT, or a refusal that
    says what there is and how to build the one needed."""
    want = tag(sm, trt_version, precision)
    if want in records:
        return records[want]
    have = ", ".join(f"{t} ({r.get('gpu', '?')})" for t, r in sorted(records.items())) or "none"
    raise InputError(
        f"model {model} has no TensorRT engine for this GPU ({sm}, TensorRT {trt_version}, {precision}); "
        f"engines in the store: {have}. An engine runs only where it was built: "
        f"footprints build-engine --model {model} --precision {precision}"
    )


def engine_for(records: dict[str, dict], gpu, precision: str) -> tuple[dict | None, str]:
    """The record of the engine built for ``gpu`` and the installed TensorRT, or None and why not."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError:
        return None, "TensorRT is not installed"
    record = records.get(tag(gpu.sm, trt.__version__, precision))
    return (record, "") if record else (None, f"no engine for {gpu.sm}, TensorRT {trt.__version__}, {precision} in the manifest")
