"""The GPU this process may use: whether there is one, what it is, and a clear
refusal where a command needs one and there is none (exit 2, one line).

PyTorch is how we ask (it ships its own CUDA runtime); without PyTorch, or with a
CPU build of it, there is no GPU for us."""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import InputError


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]
    memory_bytes: int

    @property
    def cc(self) -> str:
        """Compute capability as Triton's ``cc_model_filenames`` keys it: "9.0"."""
        return f"{self.capability[0]}.{self.capability[1]}"

    @property
    def sm(self) -> str:
        return f"sm{self.capability[0]}{self.capability[1]}"


def why_no_gpu() -> str | None:
    """None when a CUDA GPU is usable, else why not (for refusals and test skips)."""
    try:
        import torch
    except ModuleNotFoundError:
        return "PyTorch is not installed, and it is how footprints reaches CUDA"
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is a CPU build"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (torch.cuda.is_available() is False)"
    return None


def gpu(index: int = 0) -> Gpu:
    import torch

    p = torch.cuda.get_device_properties(index)
    return Gpu(p.name, (p.major, p.minor), int(p.total_memory))


def require_gpu(what: str) -> Gpu:
    """The GPU, or an :class:`InputError` saying what needed one and why there is none."""
    why = why_no_gpu()
    if why is not None:
        raise InputError(f"{what} needs an NVIDIA GPU with CUDA: {why}")
    return gpu()
