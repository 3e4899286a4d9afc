#!/usr/bin/env bash
# The main job, end to end on this machine: set up .venv/, start the gRPC service
# with the default model store (the fastest CPU engine measured here), stream synthetic tiles of
# held-out test cities and the real imagery in ../shared/data/real-oam through it,
# write mask GeoTIFFs, polygons and overlay PNGs, score them the benchmark's way,
# and stop the server. Outputs land in demo-out/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
fp=.venv/bin/footprints
out=demo-out
size="${DEMO_TILE_SIZE:-2500}"
model="$(cat model_store/DEFAULT)"  # the store's default: what a request naming no model gets
# glibc: keep freed activation blocks instead of returning them to the OS on every
# window (up to 2x faster on CPU, shared/perf-notes.md).
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
rm -rf "$out"
mkdir -p "$out"

echo "== 1/5 synthetic tiles of held-out test cities (${size} px; seed 7, not the training tiles)"
$fp synth --out "$out/cities" --size "$size" --tiles-per-city 1 --cities fairhaven,harbourside --seed 7

echo "== 2/5 start the service (model_store/; it listens at once and serves each model as it loads, the default first)"
$fp serve --store model_store --port 0 --metrics-port 0 > "$out/server.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 6000); do
  grep -q "footprints serving" "$out/server.log" && break
  kill -0 $server 2>/dev/null || { cat "$out/server.log"; exit 1; }
  sleep 0.1
done
grep "^footprints serving" "$out/server.log"
address="$(grep -o '127\.0\.0\.1:[0-9]*' "$out/server.log" | head -1)"

echo "== 3/5 segment the synthetic tiles through gRPC (no --model: the default, $model)"
for img in "$out"/cities/test/images/*.tif; do
  name="$(basename "$img" .tif)"
  $fp segment "$img" -o "$out/pred/$name.tif" --server "$address" --polygons "$out/polygons/$name.geojson"
  $fp overlay "$img" "$out/pred/$name.tif" --reference "$out/cities/test/gt/$name.tif" -o "$out/overlays/$name.png"
done
$fp evaluate --pred "$out/pred" --gt "$out/cities/test/gt" --json "$out/evaluation-synthetic.json" --name "$model"

# Real imagery: real-oam (OpenAerialMap CC BY 4.0, OpenStreetMap ODbL) and real-more
# (OpenAerialMap CC BY 4.0 / OpenStreetMap ODbL; coxsbazar: ramp / DevGlobal CC BY 4.0).
found=0
for real in ../shared/data/real-oam ../shared/data/real-more; do
  [ -d "$real/images" ] || continue
  found=1
  set_name="$(basename "$real")"
  echo "== 4/5 real imagery through gRPC ($real; attribution in its README)"
  for img in "$real"/images/*.tif; do
    name="$(basename "$img" .tif)"
    $fp segment "$img" -o "$out/$set_name-pred/$name.tif" --server "$address" --polygons "$out/polygons/$set_name-$name.geojson"
    $fp overlay "$img" "$out/$set_name-pred/$name.tif" --reference "$real/gt/$name.tif" -o "$out/overlays/$set_name-$name.png"
  done
  $fp evaluate --pred "$out/$set_name-pred" --gt "$real/gt" --json "$out/evaluation-$set_name.json" --name "$model"
done
if [ "$found" = 1 ]; then
  echo "(the default model trained on these areas, so these tables are a fit; each area held out: model_store/$model/MODEL_CARD.md)"
else
  echo "== 4/5 skipped: no real imagery beside the repository (../shared/data)"
fi

echo "== 5/5 stop the service (SIGTERM: drain, then exit)"
kill -TERM $server
wait $server || true
trap - EXIT
tail -1 "$out/server.log"
echo "outputs: $out/pred and $out/real-*-pred (masks), $out/polygons (GeoJSON), $out/overlays (green hit, red false alarm, blue miss)"
