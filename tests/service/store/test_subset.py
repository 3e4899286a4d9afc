"""The store an image serves: the default model's newest version, the versions asked for
and their ensemble members; nothing superseded, no training checkpoint."""

import json
import subprocess
import sys

import pytest

from ...conftest import REPO


def _version(store, name, v, members=()):
    folder = store / name / str(v)
    (folder / "overlays").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"name": name, "version": v, "members": list(members)}))
    for f in ("model.onnx", "model.pt", "model.pt2", "overlays/a.png", "loao.json"):
        (folder / f).write_text(f)
    (store / name / "config.pbtxt").write_text(f'name: "{name}"')


def _subset(store, out, models=""):
    # As the image's build stage runs it: a script, the standard library only.
    return subprocess.run(
        [
            sys.executable,
            "-I",
            str(REPO / "service/store/subset.py"),
            "--store",
            str(store),
            "--out",
            str(out),
            "--models",
            models,
        ],
        capture_output=True,
        text=True,
    )


def test_the_default_newest_and_the_asked_versions_with_their_members(tmp_path):
    store = tmp_path / "store"
    for v in (1, 2):
        _version(store, "effnet", v)
    _version(store, "amll", 1)
    _version(store, "amll", 2)
    _version(store, "onera", 1)
    _version(store, "blend", 1, [{"name": "amll", "version": 1, "weight": 1}, {"name": "effnet", "version": 1, "weight": 1}])
    (store / "DEFAULT").write_text("effnet\n")
    out = tmp_path / "out"
    done = _subset(store, out, "blend,onera:1")
    assert done.returncode == 0, done.stderr
    kept = sorted(str(p.relative_to(out)) for p in out.glob("*/[0-9]*"))
    assert kept == ["amll/1", "blend/1", "effnet/1", "effnet/2", "onera/1"]  # not amll/2
    assert (out / "DEFAULT").read_text() == "effnet\n" and (out / "effnet/config.pbtxt").is_file()
    files = sorted(p.name for p in (out / "effnet/2").iterdir())
    assert files == ["loao.json", "manifest.json", "model.onnx", "model.pt2"]  # no checkpoint, no pictures


@pytest.mark.parametrize(("models", "message"), [("nope", "model 'nope' is not in"), ("effnet:7", "effnet has no version 7")])
def test_a_model_not_in_the_store_fails_the_build_with_the_reason(tmp_path, models, message):
    store = tmp_path / "store"
    _version(store, "effnet", 1)
    (store / "DEFAULT").write_text("effnet\n")
    done = _subset(store, tmp_path / "out", models)
    assert done.returncode != 0 and message in done.stderr
