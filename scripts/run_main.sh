#!/usr/bin/env bash
# Set up the environment (idempotent) and run the main job: segment the sample CT (liver, spleen,
# right kidney from a box/point on one slice each), writing a Slicer segmentation, a run report and a PNG
# into out/. Uses MedSAM2 (override with MODEL=...). Where no checkpoint can be had it says so and how to
# get one, then runs the same pipeline with random weights so every step is still exercised (the output is
# then labelled a pipeline check, not a segmentation).
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
echo "main job: running the same pipeline with RANDOM WEIGHTS at 256 px as a pipeline check; its masks are not a segmentation."
"${SEG[@]}" --random-weights --image-size 256
