#!/usr/bin/env bash
# The serving image, built and run: podman builds Dockerfile from a Debian base made here
# (debootstrap), starts the container with its engine cache on a volume, sends a real tile
# from the host through `footprints segment --server` and checks the mask against the
# in-process one bit for bit, checks /metrics and grpc.health.v1, stops it with SIGTERM
# (it must drain and exit 0) and removes what it made. Reports the image's size and the
# time from `podman run` to SERVING. Fails, with the reason, where podman cannot be
# installed or cannot run containers: it never passes quietly.
#
#   bash scripts/image-test.sh            (after scripts/setup.sh: the host side uses .venv)
# Environment: IMAGE_TILE (default ../shared/data/real-oam/images/zanzibar1.tif),
# IMAGE_BASE (a base image to build from instead of the local Debian one),
# KEEP_BASE=0 to remove the Debian base too (it is kept for the next run by default).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
FP=$REPO/.venv/bin/footprints
TILE=${IMAGE_TILE:-$REPO/../shared/data/real-oam/images/zanzibar1.tif}
BASE_NAME=footprints-base:bookworm
IMAGE=footprints-image-test:latest
NAME=footprints-image-test-$$
VOLUME=footprints-image-test-cache-$$
WORK=$(mktemp -d /tmp/footprints-image-test.XXXXXX)

fail() { echo "image-test: FAILED: $*" >&2; exit 1; }
step() { echo "image-test: $*"; }
[ -x "$FP" ] || fail "$FP is missing: run scripts/setup.sh first"
[ -f "$TILE" ] || fail "no tile at $TILE (set IMAGE_TILE)"
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@" || fail "'$*' needs root (no password-less sudo here)"; fi; }

# 1. Podman (and runc, debootstrap) from Debian's packages, where absent.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  command -v apt-get >/dev/null || fail "podman is not installed and there is no apt-get to install it"
  step "installing podman, runc, debootstrap"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap >"$WORK/apt.log" 2>&1 \
    || { as_root apt-get update -q >>"$WORK/apt.log" 2>&1 \
         && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap >>"$WORK/apt.log" 2>&1; } \
    || fail "could not install podman: $(tail -3 "$WORK/apt.log")"
fi
# runc, not crun (crun refuses this machine's hybrid cgroups); no default ulimits (podman's
# exceed what the sandbox allows).
printf '[containers]\ndefault_ulimits = []\n' >"$WORK/containers.conf"
export CONTAINERS_CONF=$WORK/containers.conf
PODMAN=(podman --runtime "$(command -v runc)" --cgroup-manager=cgroupfs)

cleanup() {
  "${PODMAN[@]}" rm -f "$NAME" >/dev/null 2>&1 || true
  "${PODMAN[@]}" volume rm -f "$VOLUME" >/dev/null 2>&1 || true
  "${PODMAN[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  [ "${KEEP_BASE:-1}" = 1 ] || "${PODMAN[@]}" rmi -f "$BASE_NAME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
"${PODMAN[@]}" info >/dev/null 2>"$WORK/info.err" || fail "podman cannot run here: $(tail -3 "$WORK/info.err")"

# 2. The base: Debian bookworm's python3.11 (the project's Python), made once and kept.
BASE=${IMAGE_BASE:-$BASE_NAME}
if [ -z "${IMAGE_BASE:-}" ] && ! "${PODMAN[@]}" image exists "$BASE_NAME"; then
  step "making the base $BASE_NAME (debootstrap bookworm)"
  t=$(date +%s)
  as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$WORK/root" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
    || fail "debootstrap failed: $(tail -3 "$WORK/debootstrap.log")"
  as_root tar -C "$WORK/root" -c . | "${PODMAN[@]}" import - "$BASE_NAME" >"$WORK/import.log" 2>&1 \
    || fail "podman import of the base failed: $(tail -3 "$WORK/import.log")"
  as_root rm -rf "$WORK/root"
  step "base made in $(($(date +%s) - t)) s"
fi

# 3. The image (Docker's format: OCI images have no HEALTHCHECK). pip inside the build reaches the registry as the host does: host network,
# the host's CA bundle and pip configuration (mounted for the build only, not kept).
MOUNTS=()
for f in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do [ -f "$f" ] && MOUNTS+=(-v "$f:$f:ro"); done
step "building $IMAGE from $BASE"
t=$(date +%s)
"${PODMAN[@]}" build --format docker --network host "${MOUNTS[@]}" --build-arg BASE="$BASE" -t "$IMAGE" -f Dockerfile . >"$WORK/build.log" 2>&1 \
  || fail "podman build failed: $(tail -15 "$WORK/build.log")"
BUILD_S=$(($(date +%s) - t))
SIZE=$("${PODMAN[@]}" image inspect "$IMAGE" --format '{{.Size}}')
STORE=$("${PODMAN[@]}" run --rm --network host --entrypoint sh "$IMAGE" -c 'cd model_store && echo */[0-9]*')
USER_ID=$("${PODMAN[@]}" run --rm --network host --entrypoint id "$IMAGE" -u)
[ "$USER_ID" != 0 ] || fail "the image runs as root"
PARTS=$("${PODMAN[@]}" run --rm --network host --entrypoint sh "$IMAGE" -c \
  'for d in /usr /opt/venv /app/model_store; do printf "%s %s MB, " $d $(du -sm $d | cut -f1); done')
step "built in ${BUILD_S} s; $((SIZE / 1000000)) MB; runs as uid $USER_ID; store: $STORE; $PARTS"

# 4. Run it (host network: free ports chosen here), the engine cache on a volume.
read -r PORT MPORT < <("$REPO/.venv/bin/python" -c '
import socket
ports = []
for _ in range(2):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); ports.append(s.getsockname()[1]); s.close()
print(*ports)')
"${PODMAN[@]}" volume create "$VOLUME" >/dev/null
t0=$("$REPO/.venv/bin/python" -c 'import time; print(time.time())')
# No health-check timer (podman would ask systemd for one); the check is run below.
"${PODMAN[@]}" run -d --name "$NAME" --network host --health-interval disable -v "$VOLUME:/cache" \
  -e FOOTPRINTS_HEALTH_SERVER="127.0.0.1:$PORT" "$IMAGE" \
  serve --store model_store --host 127.0.0.1 --port "$PORT" --metrics-port "$MPORT" >/dev/null \
  || fail "podman run failed"
until "$FP" health --server "127.0.0.1:$PORT" --timeout 1 >/dev/null 2>&1; do
  state=$("${PODMAN[@]}" inspect "$NAME" --format '{{.State.Status}}')
  [ "$state" = running ] || fail "the container stopped before SERVING: $("${PODMAN[@]}" logs "$NAME" 2>&1 | tail -10)"
  elapsed=$("$REPO/.venv/bin/python" -c "import time; print(time.time() - $t0)")
  "$REPO/.venv/bin/python" -c "import sys; sys.exit(float('$elapsed') > 180)" || fail "not SERVING 180 s after podman run"
  sleep 0.2
done
START_S=$("$REPO/.venv/bin/python" -c "import time; print(f'{time.time() - $t0:.1f}')")
step "SERVING ${START_S} s after podman run"
"$FP" health --server "127.0.0.1:$PORT" | grep -q SERVING || fail "health does not say SERVING"
# The image's own health check (grpc.health.v1, inside the container).
"${PODMAN[@]}" healthcheck run "$NAME" >"$WORK/health.log" 2>&1 || fail "the image's HEALTHCHECK fails: $(tail -3 "$WORK/health.log")"

# 5. A real tile through the container, against the same tile in-process.
"$FP" segment "$TILE" --server "127.0.0.1:$PORT" --output "$WORK/container.tif" >"$WORK/remote.log" 2>&1 \
  || fail "segment --server failed: $(tail -5 "$WORK/remote.log")"
"$FP" segment "$TILE" --store model_store --output "$WORK/here.tif" >"$WORK/local.log" 2>&1 \
  || fail "segment in-process failed: $(tail -5 "$WORK/local.log")"
"$REPO/.venv/bin/python" - "$WORK/container.tif" "$WORK/here.tif" <<'EOF' || fail "the container's mask differs from the in-process one"
import sys
import numpy as np
import rasterio
with rasterio.open(sys.argv[1]) as a, rasterio.open(sys.argv[2]) as b:
    same = a.crs == b.crs and a.transform == b.transform and np.array_equal(a.read(1), b.read(1))
    print(f"image-test: mask {a.width} x {a.height}, {np.count_nonzero(a.read(1))} building px, bit for bit: {same}")
sys.exit(0 if same else 1)
EOF
METRICS=$("$REPO/.venv/bin/python" -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$MPORT/metrics', timeout=5).read().decode())")
echo "$METRICS" | grep -q '^footprints_tile_seconds_count [1-9]' || fail "/metrics does not count the tile"

# 6. SIGTERM: the server drains and exits 0.
"${PODMAN[@]}" kill --signal TERM "$NAME" >/dev/null
CODE=$("${PODMAN[@]}" wait "$NAME")
[ "$CODE" = 0 ] || fail "exit $CODE after SIGTERM: $("${PODMAN[@]}" logs "$NAME" 2>&1 | tail -5)"
step "passed: image $((SIZE / 1000000)) MB, built in ${BUILD_S} s, SERVING ${START_S} s after podman run, mask bit for bit, SIGTERM -> exit 0"
