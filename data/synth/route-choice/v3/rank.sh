#!/usr/bin/env bash
# issue 26's rank study (../README.md, "Does the search's score rank trained routes?"): ten 20-layer routes,
# each trained 40 steps with version 3's recipe (seed 0), then scored on the choice set as version 3's
# candidates are (same sweep directory, so full depth is shared). Two lanes of one thread; resumable.
# usage: data/synth/route-choice/v3/rank.sh A|B   (A: routes 1, 3, 5, 7, 9 of the table; B: 2, 4, 6, 8, 10)
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
mkdir -p runs/v3-rank/logs
ROUTES=("3,4,5,6,12,13,14,17,25,26" "3,4,5,6,11,12,13,14,25,26" "3,4,6,9,12,13,14,17,25,26"
        "3,4,5,6,7,12,13,14,16,17" "3,4,6,9,11,12,13,14,25,26" "3,4,5,6,12,13,14,15,25,26"
        "3,4,6,7,9,12,13,14,25,26" "3,4,9,12,13,14,15,17,25,26" "3,4,6,9,12,13,14,15,25,26"
        "3,4,7,9,12,13,14,15,25,26")
first=0; [ "$1" = B ] && first=1
for ((k = first; k < ${#ROUTES[@]}; k += 2)); do
  skip=${ROUTES[$k]} name=${ROUTES[$k]//,/-}
  dir=runs/v3-rank/$name alias=_rank-$name
  # scored in an earlier session: its rows are in the committed sweep, and nothing is trained again
  rows=$(grep -c "\"config_id\": \"adapted:$alias\"" data/synth/route-choice/v3/choice-sweep/per_sequence.jsonl)
  [ "$rows" -ge 192 ] && continue
  if [ ! -f $dir/adapter/adapter_model.safetensors ]; then
    bash data/synth/route-choice/v3/train.sh 20 $skip 0 $dir --max_steps 40 \
      >> runs/v3-rank/logs/$name.log 2>&1 || { echo "train $dir failed" >&2; exit 1; }
  fi
  rm -rf src/adalas/adapters/$alias && cp -r $dir/adapter src/adalas/adapters/$alias
  bash data/synth/route-choice/v3/score.sh --adapted $alias >> runs/v3-rank/logs/sweep.log 2>&1 || exit 1
done
