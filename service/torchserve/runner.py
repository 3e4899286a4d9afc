"""``footprints torchserve start|stop``: a real TorchServe (Java 17) over a folder of
our archives, on chosen or free ports, started and waited on until every model's
workers are up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from service.errors import InputError
from service.torchserve.archive import _tool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class TorchServeConfig:
    archives: Path  # folder of .mar files (TorchServe's model store)
    inference_port: int = 0  # 0: a free port
    management_port: int = 0
    metrics_port: int = 0
    workers: int = 1
    job_queue_size: int = 64
    log_dir: Path | None = None
    grpc_ports: tuple[int, int] = (0, 0)

    def properties(self) -> str:
        return (
            "\n".join(
                [
                    f"inference_address=http://127.0.0.1:{self.inference_port}",
                    f"management_address=http://127.0.0.1:{self.management_port}",
                    f"metrics_address=http://127.0.0.1:{self.metrics_port}",
                    # Its own gRPC API (unused by us) takes ports too: free ones, so instances coexist.
                    f"grpc_inference_port={self.grpc_ports[0]}",
                    f"grpc_management_port={self.grpc_ports[1]}",
                    f"model_store={self.archives.resolve()}",
                    "load_models=all",
                    f"default_workers_per_model={self.workers}",
                    f"job_queue_size={self.job_queue_size}",
                    # Localhost model tier behind our front end: no tokens, no model API changes.
                    "disable_token_authorization=true",
                    "enable_model_api=false",
                    "install_py_dep_per_model=false",
                    f"max_request_size={512 * 2**20}",
                    f"max_response_size={512 * 2**20}",
                ]
            )
            + "\n"
        )


class TorchServe:
    """A TorchServe process in the foreground (so its owner can stop it, or kill it)."""

    def __init__(self, cfg: TorchServeConfig) -> None:
        if shutil.which("java") is None:
            raise InputError("TorchServe needs Java 17 (`java` on PATH), which this machine lacks")
        exe = _tool("torchserve")
        if exe is None:
            raise InputError("torchserve is not installed (pip install torchserve==0.12.0)")
        for attr in ("inference_port", "management_port", "metrics_port"):
            if getattr(cfg, attr) == 0:
                setattr(cfg, attr, free_port())
        if 0 in cfg.grpc_ports:
            cfg.grpc_ports = (free_port(), free_port())
        self.cfg = cfg
        # Not inside the archive folder: TorchServe would take a subfolder there for a model.
        logs = cfg.log_dir or Path(tempfile.mkdtemp(prefix="footprints-torchserve-"))
        logs.mkdir(parents=True, exist_ok=True)
        props = logs / "config.properties"
        props.write_text(cfg.properties())
        self.log = (logs / "torchserve.out").open("w")
        self.proc = subprocess.Popen(
            [exe, "--start", "--foreground", "--ncs", "--ts-config", str(props), "--model-store", str(cfg.archives)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=logs,
            start_new_session=True,  # its own process group: the launcher spawns Java, stop ends both
            # TMPDIR: the launcher keeps its pid file there, so instances do not see each other.
            env={**os.environ, "LOG_LOCATION": str(logs), "METRICS_LOCATION": str(logs), "TMPDIR": str(logs)},
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.cfg.inference_port}"

    def models(self) -> dict[str, int]:
        """Model name -> workers ready, from the management API."""
        base = f"http://127.0.0.1:{self.cfg.management_port}/models"
        with urllib.request.urlopen(base, timeout=5) as r:
            names = [m["modelName"] for m in json.load(r)["models"]]
        ready = {}
        for name in names:
            with urllib.request.urlopen(f"{base}/{name}", timeout=5) as r:
                ready[name] = sum(w.get("status") == "READY" for w in json.load(r)[0]["workers"])
        return ready

    def wait_ready(self, expected: int, timeout: float = 180.0) -> dict[str, int]:
        """Until ``expected`` models each have a ready worker, or an error saying why not."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise InputError(f"TorchServe exited ({self.proc.returncode}); see {self.log.name}")
            try:
                ready = self.models()
                if len(ready) >= expected and all(ready.values()):
                    return ready
                last = str(ready)
            except (urllib.error.URLError, OSError, KeyError, IndexError) as e:
                last = str(e)
            time.sleep(0.25)
        raise InputError(f"TorchServe not ready after {timeout:.0f} s ({last}); see {self.log.name}")

    def signal(self, sig: int) -> None:
        """Signal TorchServe's whole process group (launcher and Java)."""
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 60.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(timeout)
        self.log.close()
        return int(self.proc.returncode)


STATE = ".footprints-torchserve.json"  # beside the archives: what `stop` needs


def start_daemon(archives: Path, port: int, management_port: int, metrics_port: int, workers: int, job_queue_size: int) -> dict:
    """``footprints torchserve start``: a TorchServe that outlives this command."""
    cfg = TorchServeConfig(archives, port, management_port, metrics_port, workers, job_queue_size)
    expected = len(list(archives.glob("*.mar")))
    if expected == 0:
        raise InputError(f"{archives}: no .mar archives (build them with `footprints torchserve archive`)")
    ts = TorchServe(cfg)
    try:
        ready = ts.wait_ready(expected)
    except InputError:
        ts.stop()
        raise
    ts.log.close()
    state = {"pid": ts.proc.pid, "port": cfg.inference_port, "management_port": cfg.management_port, "models": sorted(ready)}
    (archives / STATE).write_text(json.dumps(state))
    return state


def group_processes(pgid: int) -> list[int]:
    """Pids of a process group's running members (zombies left to an init that does
    not reap them do not count)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def stop_daemon(archives: Path, timeout: float = 60.0) -> int:
    path = archives / STATE
    if not path.is_file():
        raise InputError(f"{archives}: no TorchServe started here by `footprints torchserve start`")
    pid = int(json.loads(path.read_text())["pid"])
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while group_processes(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if group_processes(pid):
            os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    path.unlink()
    return pid
