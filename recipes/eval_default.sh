#!/usr/bin/env bash
# Held-out click evaluation of a candidate default model against the baselines (issue 18's goals).
#
#   recipes/eval_default.sh CHECKPOINT NAME OUT      # the candidate
#   recipes/eval_default.sh default shipped OUT      # the packaged default model
#   recipes/eval_default.sh grabcut grabcut OUT      # the GrabCut baseline
#   recipes/eval_default.sh otsu otsu OUT            # the Otsu baseline (MAX_CLICKS=1: one click only)
#
# Sets (never trained on): BSDS500 test split, objects >= 1% of the image (made by
# recipes/heldout_bsds500.py), one random object on each of the first 50 images; DSB2018 and
# CVPPP_A1 subsets as in benchmarks/eval/run.sh (30 and 20 objects). Standard clicker (centre of the
# larger error region), previous logits fed back, top-ranked mask on the first click, 10 clicks.
# Each report goes to OUT/<set>_<NAME>; reports of other methods already in OUT are shown alongside.
# ONLY=bsds500 (or dsb2018, cvppp_a1) runs one set. FULL=1: larger sets (BSDS500 test, every image:
# 200 objects; DSB2018 220 and CVPPP_A1 80, two per image) instead of the small subsets.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=$1 NAME=$2 OUT=$3
DATA=${SEGANY_DATA:-../shared/data}
BSDS=${BSDS_HELDOUT:-/tmp/bsds500_test_1pct}
[ -f "$BSDS/annotations.json" ] || python recipes/heldout_bsds500.py "$DATA/BSDS500" "$BSDS"
case "$CKPT" in
  default) WHO=() ;;
  grabcut) WHO=(--baseline grabcut) ;;
  otsu) WHO=(--baseline otsu) ;;
  *) WHO=(-c "$CKPT") ;;
esac
SETS=(
  "bsds500 $BSDS --limit 50 --max-per-image 1"
  "dsb2018 $DATA/DSB2018 --limit 30 --max-per-image 2"
  "cvppp_a1 $DATA/CVPPP_A1 --limit 20 --max-per-image 1"
)
if [ -n "${FULL:-}" ]; then  # 4-7x the objects: far less noise
  SETS=(
    "bsds500 $BSDS --limit 200 --max-per-image 1"
    "dsb2018 $DATA/DSB2018 --limit 220 --max-per-image 2"
    "cvppp_a1 $DATA/CVPPP_A1 --limit 80 --max-per-image 2"
  )
fi
for s in "${SETS[@]}"; do
  set -- $s
  set_name=$1 dir=$2; shift 2
  [[ "$set_name" == *"${ONLY:-}"* ]] || continue
  cmp=()
  for other in "$OUT/${set_name}_"*; do
    [ -f "$other/results.json" ] && [ "$other" != "$OUT/${set_name}_${NAME}" ] && cmp+=(--compare "$other")
  done
  nice -n 10 segany eval points --data "$dir" "${WHO[@]}" --name "$NAME" "$@" --max-clicks "${MAX_CLICKS:-10}" --cases 1 \
    --threads 1 --quiet "${cmp[@]}" -o "$OUT/${set_name}_${NAME}"
done
