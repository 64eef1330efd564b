#!/usr/bin/env bash
# version 4 (data/synth/route-choice/README.md, "Version 4"): version 3's recipe on the routes version 3 chose, with
# 320 steps instead of 160. Two lanes of one thread: v4/pipeline.sh A (seed 0) and B (seed 1). Each trains the
# 20-layer candidate and scores it on the choice set; the 24-layer pair trains only if v4/choose.py says the 20-layer
# pair gained (the plan's rule), so run `python data/synth/route-choice/v4/choose.py` between. Resumable: run again.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case "$1" in A) seed=0;; B) seed=1;; *) echo "usage: $0 A|B [24]" >&2; exit 2;; esac
sizes=${2:-20}
here=data/synth/route-choice
mkdir -p runs/v4/logs
for size in $sizes; do
  route=$(.venv/bin/python -c "import json; print(json.load(open('$here/v3/choice.json'))['choice']['$size']['route'])")
  dir=runs/v4/$size-s$seed alias=_v4-$size-s$seed
  if [ ! -f $dir/adapter/adapter_model.safetensors ]; then
    echo "$(date -u +%FT%TZ) train $dir start" >> runs/v4/logs/times.log
    bash $here/v3/train.sh $size $route $seed $dir --max_steps 320 >> runs/v4/logs/$size-s$seed.log 2>&1 \
      || { echo "train $dir failed" >&2; exit 1; }
    echo "$(date -u +%FT%TZ) train $dir end" >> runs/v4/logs/times.log
  fi
  rm -rf src/adalas/adapters/$alias && cp -r $dir/adapter src/adalas/adapters/$alias
  bash $here/v3/score.sh --adapted $alias >> runs/v4/logs/sweep.log 2>&1 || exit 1
  echo "$(date -u +%FT%TZ) scored $alias" >> runs/v4/logs/times.log
  # v4/choose.py compares with version 3's shipped seed, its rows made again (a no-op once they are there);
  # at 20 layers version 4 ships since 2026-12-07, and those rows are in v3/choice-sweep/ already
  if [ $size = 24 ] && [ $seed = 0 ]; then
    bash $here/v3/score.sh --adapted smollm2-135m-adapted-24 >> runs/v4/logs/sweep.log 2>&1 || exit 1
  fi
done
echo "$(date -u +%FT%TZ) lane $1 ($sizes) done" >> runs/v4/logs/times.log
