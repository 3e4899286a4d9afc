#!/usr/bin/env bash
# The main job, end to end on this machine, with the default AMLL model in
# model_store/: set up .venv/, synthesise tiles of two held-out test cities,
# segment them with the tiling engine (mask GeoTIFF, polygons, overlay), score
# them the benchmark's way, then do the same for the real imagery in
# ../shared/data/real-oam when it is there. Outputs land in demo-out/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
fp=.venv/bin/footprints
model=model_store/amll/1/model.pt
out=demo-out
size="${DEMO_TILE_SIZE:-2500}"
# glibc: keep freed activation blocks instead of returning them to the OS on
# every window (up to 2x faster on CPU, shared/perf-notes.md).
export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
rm -rf "$out"

echo "== 1/4 synthetic tiles of held-out test cities (${size} px, seed 7: not the training tiles)"
$fp synth --out "$out/cities" --size "$size" --tiles-per-city 1 --cities fairhaven,harbourside --seed 7

echo "== 2/4 segment with $model (tiling engine, CPU)"
for img in "$out"/cities/test/images/*.tif; do
  name="$(basename "$img" .tif)"
  $fp segment "$img" -o "$out/pred/$name.tif" --checkpoint "$model" \
    --polygons "$out/polygons/$name.geojson"
  $fp overlay "$img" "$out/pred/$name.tif" --reference "$out/cities/test/gt/$name.tif" -o "$out/overlays/$name.png"
done

echo "== 3/4 benchmark metric on the synthetic test tiles"
$fp evaluate --pred "$out/pred" --gt "$out/cities/test/gt" --json "$out/evaluation-synthetic.json" --name amll

real=../shared/data/real-oam
if [ -d "$real/images" ]; then
  echo "== 4/4 real imagery ($real: OpenAerialMap CC BY 4.0, OpenStreetMap ODbL)"
  for img in "$real"/images/*.tif; do
    name="$(basename "$img" .tif)"
    $fp segment "$img" -o "$out/real-pred/$name.tif" --checkpoint "$model"
    $fp overlay "$img" "$out/real-pred/$name.tif" --reference "$real/gt/$name.tif" -o "$out/overlays/real-$name.png"
  done
  $fp evaluate --pred "$out/real-pred" --gt "$real/gt" --json "$out/evaluation-real.json" --name amll
else
  echo "== 4/4 skipped: no real imagery at $real"
fi
echo "outputs: $out/pred (masks), $out/polygons (GeoJSON), $out/overlays (green hit, red false alarm, blue miss)"
