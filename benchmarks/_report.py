"""Shared by the benchmark scripts: machine facts, a JSON report, a printed table."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


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
