"""``footprints torchserve archive``: a store version as a TorchServe ``.mar``.

The archive holds the version's exported program (``model.pt2``, sha256-checked
against the manifest first: a damaged graph is refused here, not at serving time),
its ``manifest.json``, our window handler, and a model config that hands batching to
TorchServe (``batchSize``, ``maxBatchDelay``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from service.errors import InputError
from service.store.repository import MANIFEST, PROGRAM, ModelStore

HANDLER = Path(__file__).with_name("handler.py")


def _tool(name: str) -> str | None:
    """A console script of this environment (a venv's bin need not be on PATH), or PATH's."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.is_file() else shutil.which(name)


def archive_name(name: str, version: int) -> str:
    """TorchServe's model name for a store version (its URL: /predictions/<this>)."""
    return f"{name}-v{version}"


def model_config(batch_size: int, max_batch_delay_ms: int, workers: int, response_timeout_s: int) -> str:
    return (
        f"minWorkers: {workers}\nmaxWorkers: {workers}\nbatchSize: {batch_size}\n"
        f"maxBatchDelay: {max_batch_delay_ms}\nresponseTimeout: {response_timeout_s}\n"
    )


def build_archive(
    store: Path,
    model: str,
    out: Path,
    batch_size: int = 4,
    max_batch_delay_ms: int = 5,
    workers: int = 1,
    response_timeout_s: int = 600,
) -> Path:
    """Write ``out/<name>-v<version>.mar`` for ``model`` (``NAME`` or ``NAME:VERSION``)."""
    entry = ModelStore(store).find(model)
    if entry.manifest.members:
        members = ", ".join(f"{m['name']}:{m['version']}" for m in entry.manifest.members)
        raise InputError(
            f"{entry.name} v{entry.version} is an ensemble ({members}): an archive holds one graph; archive each member"
        )
    program = entry.verify(PROGRAM)  # refuses a graph that is not the one exported
    archiver = _tool("torch-model-archiver")
    if archiver is None:
        raise InputError("torch-model-archiver is not installed (pip install torch-model-archiver==0.12.0)")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="footprints-mar-") as tmp:
        config = Path(tmp) / "model-config.yaml"
        config.write_text(model_config(batch_size, max_batch_delay_ms, workers, response_timeout_s))
        done = subprocess.run(
            [
                archiver,
                "--model-name", archive_name(entry.name, entry.version),
                "--version", str(entry.version),
                "--serialized-file", str(program),
                "--handler", str(HANDLER),
                "--extra-files", str(entry.path(MANIFEST)),
                "--config-file", str(config),
                "--export-path", str(out),
                "--force",
            ],
            capture_output=True, text=True,
        )  # fmt: skip
    if done.returncode != 0:
        raise InputError(f"torch-model-archiver failed for {entry.name} v{entry.version}: {done.stderr.strip()[-2000:]}")
    return out / f"{archive_name(entry.name, entry.version)}.mar"
