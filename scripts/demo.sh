#!/usr/bin/env bash
# The main job, end to end on this machine: set up .venv/, make synthetic cities,
# score the colour-lookup reference floor on the held-out test cities with the
# benchmark metric, and draw overlay PNGs. Outputs land in demo-out/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
fp=.venv/bin/footprints
out=demo-out
rm -rf "$out"
size="${DEMO_TILE_SIZE:-2000}"

echo "== 1/3 synthetic cities (${size} px tiles, 5 train + 5 test cities)"
$fp synth --out "$out/cities" --size "$size" --tiles-per-city 1 --seed 0

echo "== 2/3 colour-lookup baseline: fit on train cities, label test cities"
$fp baseline --data "$out/cities" --out "$out/pred" --overlays "$out/overlays"

echo "== 3/3 benchmark metric on the test cities"
$fp evaluate --pred "$out/pred" --gt "$out/cities/test/gt" --json "$out/evaluation.json" --name "colour baseline"
echo "overlays (green hit, red false alarm, blue miss): $out/overlays/*.png"
