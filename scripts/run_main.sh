#!/usr/bin/env bash
# Set up the environment (idempotent) and run the main job: segment the sample CT (liver, spleen,
# right kidney from a box/point on one slice each), writing a Slicer segmentation, a run report and a PNG
# into out/. Uses MedSAM2 (override with MODEL=...). Where no checkpoint can be had it says so and how to
# get one, then segments with the weights-free classical baseline engine instead, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
DATA=${SAM2VOLUME_SHARED_DATA:-../shared/data}
IMAGE=${IMAGE:-$DATA/totalseg/example_ct_sm.nii.gz}
PROMPTS=${PROMPTS:-examples/prompts_ct_abdomen.json}
MODEL=${MODEL:-medsam2-latest}
mkdir -p out
SEG=(.venv/bin/sam2volume segment "$IMAGE" --prompts "$PROMPTS" -o out/sample.seg.nrrd --png out/sample.png --model "$MODEL")
.venv/bin/sam2volume info "$IMAGE"
if "${SEG[@]}"; then
  exit 0
fi
echo
echo "main job: no $MODEL checkpoint could be had (see the message above for where to put it)."
echo "main job: segmenting with the classical BASELINE engine instead (no SAM2; see README for its measured Dice)."
"${SEG[@]}" --engine baseline
