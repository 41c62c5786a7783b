#!/usr/bin/env bash
# Rebuilds the zero-shot evaluation reports in benchmarks/eval/ (see README.md there).
#
#   benchmarks/eval/run.sh baselines              # GrabCut (points, boxes) and Canny (edges)
#   benchmarks/eval/run.sh model                  # the packaged default model (reports named *_default)
#   benchmarks/eval/run.sh model CKPT NAME        # any checkpoint (reports named *_NAME)
#   ONLY="points CVPPP" benchmarks/eval/run.sh ...  # only the runs whose line contains ONLY
#
# Subsets are small so that each run takes minutes on a shared 2-core CPU; the model runs use
# exactly the objects/images of the baseline runs (same --limit, --max-per-image, --seed), so the
# baseline numbers shown next to them (--compare) are on the same data.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${SEGANY_DATA:-../shared/data}  # relative to the repository root
OUT=benchmarks/eval
EVAL=(nice -n 10 segany eval)
COMMON=(--threads 1 --quiet)

# protocol dataset subset-options...
RUNS=(
  "points DSB2018 --limit 30 --max-per-image 2"
  "points CVPPP_A1 --limit 4 --max-per-image 1"
  "boxes DSB2018 --limit 10"
  "boxes CVPPP_A1 --limit 10"
  "edges BSDS500 --split test --limit 10"
)
# No classical baseline for proposals: the model only.
MODEL_ONLY=(
  "proposals DSB2018 --limit 10"
  "proposals CVPPP_A1 --limit 10"
)

baseline_of() { [ "$1" = edges ] && echo canny || echo grabcut; }

case "${1:-}" in
  baselines)
    for run in "${RUNS[@]}"; do
      [[ "$run" == *"${ONLY:-}"* ]] || continue
      set -- $run
      proto=$1 ds=$2; shift 2
      base=$(baseline_of "$proto")
      "${EVAL[@]}" "$proto" --data "$DATA/$ds" --baseline "$base" "$@" "${COMMON[@]}" -o "$OUT/${proto}_${ds}_${base}"
    done
    ;;
  model)
    if [ $# -ge 3 ]; then MODEL=(-c "$2" --name "$3"); NAME=$3; else MODEL=(); NAME=default; fi
    for run in "${RUNS[@]}"; do
      [[ "$run" == *"${ONLY:-}"* ]] || continue
      set -- $run
      proto=$1 ds=$2; shift 2
      base=$(baseline_of "$proto")
      cmp=()
      [ -f "$OUT/${proto}_${ds}_${base}/results.json" ] && cmp=(--compare "$OUT/${proto}_${ds}_${base}")
      "${EVAL[@]}" "$proto" --data "$DATA/$ds" "${MODEL[@]}" "$@" "${cmp[@]}" "${COMMON[@]}" -o "$OUT/${proto}_${ds}_${NAME}"
    done
    for run in "${MODEL_ONLY[@]}"; do
      [[ "$run" == *"${ONLY:-}"* ]] || continue
      set -- $run
      proto=$1 ds=$2; shift 2
      "${EVAL[@]}" "$proto" --data "$DATA/$ds" "${MODEL[@]}" "$@" "${COMMON[@]}" -o "$OUT/${proto}_${ds}_${NAME}"
    done
    ;;
  *)
    sed -n '2,10p' "$0"
    exit 2
    ;;
esac
