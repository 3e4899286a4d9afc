"""The server's log: one line per finished RPC (every non-OK outcome at WARNING, with
its code), as text or as JSON lines (``serve --log-format json``) for log pipelines.

Fields of an RPC line: request id (the client's ``x-request-id`` metadata, else a new
one, sent back in the trailing metadata), method, model, version, code, seconds and,
for errors, the message. Metadata values (bearer tokens among them) are never logged.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field

LOG = logging.getLogger("footprints")


@dataclass
class CallLog:
    """What one RPC's log line says; handlers fill in the model as they learn it."""

    method: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    model: str | None = None
    version: int | None = None
    started: float = field(default_factory=time.perf_counter)


current: contextvars.ContextVar[CallLog | None] = contextvars.ContextVar("footprints_call", default=None)


def note_model(name: str, version: int) -> None:
    """Record the model version the current RPC runs on (for its log line)."""
    call = current.get()
    if call is not None:
        call.model, call.version = name, version


def rpc_done(call: CallLog, code: str, message: str = "", error: BaseException | None = None) -> None:
    fields = {
        "event": "rpc",
        "request_id": call.request_id,
        "method": call.method,
        "model": call.model,
        "version": call.version,
        "code": code,
        "seconds": round(time.perf_counter() - call.started, 4),
    }
    if message:
        fields["message"] = message
    model = f" {call.model} v{call.version}" if call.model else ""
    text = f"{call.method}{model} [{call.request_id}] {code} in {fields['seconds']:.3f} s" + (f": {message}" if message else "")
    level = logging.INFO if code == "OK" else logging.ERROR if error is not None else logging.WARNING
    LOG.log(level, "%s", text, extra={"fields": fields}, exc_info=error)


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname.lower()}
        doc.update(getattr(record, "fields", None) or {"message": record.getMessage()})
        if record.exc_info:
            doc["traceback"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class _Text(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower()}: {record.getMessage()}"
        return text + ("\n" + self.formatException(record.exc_info) if record.exc_info else "")


def configure(fmt: str = "text", level: str = "info") -> None:
    """Log to stderr as ``text`` or ``json`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json() if fmt == "json" else _Text())
    LOG.handlers[:] = [handler]
    LOG.setLevel(level.upper())
    LOG.propagate = False
