"""Shared by the benchmark scripts: machine facts, a JSON report, a printed table."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from service.allocator import STARTUP_ENV

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def with_startup_env() -> None:
    """Re-run this script under the server's allocator settings (service.memory), so
    in-process figures and a server's compare fairly."""
    if any(os.environ.get(k) != v for k, v in STARTUP_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **STARTUP_ENV})


def peak_rss_mb(pid: int | str = "self") -> float:
    """A process's peak RSS, VmHWM (ru_maxrss would carry a parent's peak over exec);
    0 for a process already gone."""
    try:
        found = re.search(r"VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0.0
    return int(found.group(1)) / 1024 if found else 0.0


def serve(store: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """A ``footprints serve`` process on a free port, no metrics endpoint, in its own
    process group (the server and what it spawns); returns it and its address."""
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("footprints")),
            "serve",
            "--store",
            str(store),
            "--port",
            "0",
            "--metrics-port",
            "-1",
            *args,
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **STARTUP_ENV},
        cwd=ROOT,
        start_new_session=True,
    )
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if line.startswith("footprints listening"):  # at once; "serving" follows once the default model is
        line = proc.stdout.readline()  # type: ignore[union-attr]
    found = re.search(r"127\.0\.0\.1:(\d+)", line)
    if found is None:
        proc.kill()
        raise RuntimeError(f"footprints serve did not start: {line!r}")
    return proc, f"127.0.0.1:{found.group(1)}"


def machine() -> dict:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write(name: str, rows: list[dict], extra: dict | None = None, out: Path | None = None) -> Path:
    """Write ``{machine, rows, ...extra}`` as JSON and print ``rows`` as a table."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), "rows": rows, **(extra or {})}, indent=2) + "\n")
    print_table(rows)
    print(f"\nwrote {path}")
    return path


def print_table(rows: list[dict]) -> None:
    """Columns in first-seen order; a row without a column leaves it blank."""
    cols = list(dict.fromkeys(c for r in rows for c in r))
    width = {c: max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in cols}
    print(" | ".join(c.ljust(width[c]) for c in cols))
    print("-+-".join("-" * width[c] for c in cols))
    for r in rows:
        print(" | ".join(_fmt(r.get(c, "")).ljust(width[c]) for c in cols))


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
