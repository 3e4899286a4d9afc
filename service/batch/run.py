"""The driver of ``footprints batch``: Ray actors (one model load each) take tiles as
they come free; a worker that dies mid-tile is restarted by Ray and its tile sent
again (to whichever worker is free first); finished tiles are recorded in the ledger
as they come in; the city layer and, with ``--gt``, the benchmark's table at the end.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from service.batch.inputs import TileInput, resolve
from service.batch.layer import city_layer, write_geoparquet, write_gpkg
from service.batch.ledger import Ledger
from service.batch.stac import write_stac
from service.batch.worker import Job, read_outlines
from service.errors import InputError
from service.machine import available_cores, half_the_ram
from service.store.repository import ModelStore

ATTEMPTS = 3  # a tile whose worker died this many times is reported failed
WORKERS_FILE = "workers.json"  # the workers' PIDs (for operators, and the tests that kill one)


@dataclass
class Outcome:
    done: list[str]
    skipped: list[str]
    failed: dict[str, str]
    buildings: int
    seconds: float
    megapixels: float
    layer: Path | None
    stac: Path | None = None  # the run's STAC Collection (an Item per tile)


OUTPUT_FOLDERS = ("masks", "polygons", "probabilities")


def remove_partials(out: Path) -> int:
    """Delete the ``.NAME.PID.partial.*`` files a killed worker or run left behind (the
    driver calls this before its workers start and after they end, when no worker of
    this output folder is writing); returns how many."""
    stale = [p for sub in OUTPUT_FOLDERS for p in (out / sub).glob(".*.partial.*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def _ray(local: bool):
    if local:
        # Loopback only: Ray's job and dashboard APIs run code for whoever reaches them.
        # Ray binds its servers to the node's address, which it takes to be the host's
        # network one unless it runs as on a laptop (this switch, read when ray is imported).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ModuleNotFoundError:
        raise InputError("footprints batch runs on Ray, which is not installed: pip install '.[batch]'") from None
    return ray


def run_batch(
    spec: str,
    out: Path,
    job: Job,
    workers: int | None = None,
    address: str | None = None,
    dashboard: bool = False,
    progress: bool = True,
    on_result: Callable[[dict], None] | None = None,
) -> Outcome:
    tiles = resolve(spec)
    out.mkdir(parents=True, exist_ok=True)
    remove_partials(out)
    local = address is None
    ray = _ray(local)
    from service.batch.worker import TileSegmenter

    t0 = time.perf_counter()
    if local:
        workers = workers or available_cores()
        # An embedded run listens on no other interface, and has no dashboard unless asked.
        ray.init(
            num_cpus=workers,
            include_dashboard=dashboard,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        workers = workers or int(ray.cluster_resources().get("CPU", 1))
    try:
        entry = ModelStore(job.store).find(job.model)
        model = job.made_by(entry)  # what the ledger checks finished tiles against
        ledger = Ledger(out)
        # Done: this model version, this input, every output intact, the city layer's pieces among them.
        finished = {
            t.name
            for t in tiles
            if ledger.done(t.name, model, t.fingerprint(), out) and (out / "outlines" / f"{t.name}.json").is_file()
        }
        todo = [t for t in tiles if t.name not in finished]
        skipped = [t.name for t in tiles if t.name in finished]
        ledger.forget([t.name for t in todo])  # stale or damaged: no longer counts as done
        # Tiles done earlier join the city layer with the pieces they left on disk.
        results: list[dict] = [{"name": n, **read_outlines(out / "outlines" / f"{n}.json")} for n in skipped]
        failed: dict[str, str] = {}
        done: list[str] = []
        megapixels = 0.0
        if todo:
            actors = _start_workers(ray, TileSegmenter, job, workers, local)
            pids = ray.get([a.pid.remote() for a in actors])
            (out / WORKERS_FILE).write_text(json.dumps({"pids": pids}))
            bar = tqdm(total=len(todo), desc="tiles", unit="tile", disable=not progress)
            queue = list(todo)
            attempts: dict[str, int] = {}
            running: dict = {}  # object ref -> (actor index, tile)
            # Workers that died: Ray restarts them where resources allow (on a lost node's
            # share, perhaps never); each gets tiles again once it answers a ping.
            restarting: dict = {}  # ping ref -> actor index
            idle = list(range(len(actors)))
            t_start = time.perf_counter()
            while queue or running:
                while queue and idle:
                    i, tile = idle.pop(), queue.pop(0)
                    running[actors[i].segment.remote(tile, out)] = (i, tile)
                ready, _ = ray.wait([*running, *restarting], num_returns=1)
                if ready[0] in restarting:
                    j = restarting.pop(ready[0])
                    try:
                        ray.get(ready[0])
                        idle.append(j)  # back: it takes tiles again
                    except ray.exceptions.RayActorError:
                        restarting[actors[j].pid.remote()] = j
                    continue
                i, tile = running.pop(ready[0])
                try:
                    r = ray.get(ready[0])
                except ray.exceptions.RayActorError as e:  # the worker died mid-tile, its node perhaps
                    restarting[actors[i].pid.remote()] = i
                    attempts[tile.name] = attempts.get(tile.name, 0) + 1
                    if attempts[tile.name] < ATTEMPTS:
                        queue.insert(0, tile)  # to whichever worker is free first
                    else:
                        failed[tile.name] = f"its worker died {ATTEMPTS} times ({e})"
                    continue
                idle.append(i)
                if "error" in r:
                    failed[tile.name] = r["error"]
                else:
                    ledger.record(tile.name, model, tile.fingerprint(), r["outputs"], {"seconds": round(r["seconds"], 2)})
                    results.append(r)
                    done.append(tile.name)
                    megapixels += r["pixels"] / 1e6
                    bar.set_postfix_str(f"{megapixels / (time.perf_counter() - t_start):.1f} Mpx/s")
                if on_result is not None:
                    on_result(r)
                bar.update(1)
            bar.close()
            remove_partials(out)  # the attempts of workers that died mid-tile
        layer = None
        buildings = 0
        if results:
            layer = out / "buildings.gpkg"
            city = city_layer(results, job.polygon)
            buildings = write_gpkg(layer, city)
            write_geoparquet(out, city)  # the same layer for Arrow readers
        finished_now = set(done) | set(skipped)
        stac = write_stac(out, [t for t in tiles if t.name in finished_now], entry) if finished_now else None
        return Outcome(done, skipped, failed, buildings, time.perf_counter() - t0, megapixels, layer, stac)
    finally:
        ray.shutdown()


def _start_workers(ray, cls, job: Job, workers: int, local: bool) -> list:
    """``workers`` actors, each holding the model. Ray restarts one that dies
    (``max_restarts``); its tile is resent by the driver. On one machine each is pinned
    to its own cores and given its share of the memory budget."""
    budget = job.memory_budget_bytes or half_the_ram()
    share = budget // workers
    cores = sorted(os.sched_getaffinity(0)) if local else []
    actor = ray.remote(num_cpus=1, max_restarts=-1, max_task_retries=0)(cls)
    actors = []
    for i in range(workers):
        mine = cores[i::workers] if local and workers <= len(cores) else None
        actors.append(actor.remote(replace(job, memory_budget_bytes=share, cores=mine)))
    return actors


__all__ = ["Job", "Outcome", "TileInput", "run_batch"]
