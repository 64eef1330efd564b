#!/usr/bin/env bash
# version 3 (data/synth/route-choice/README.md): two lanes of one thread; each trains its candidates in order
# and scores each on the choice set as it lands (one sweep directory, serialised by flock). Resumable: run again.
# usage: data/synth/route-choice/v3/pipeline.sh A|B   (A: seed 0, builds the teacher cache first; B: seed 1, waits for it)
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p runs/v3/logs
candidate() {  # SIZE ROUTE SEED: train (resumes), then score as alias _v3-SIZE-ROUTE-sSEED
  local dir=runs/v3/$1-$2-s$3 alias=_v3-$1-$2-s$3
  if [ ! -f $dir/adapter/adapter_model.safetensors ]; then
    echo "$(date -u +%FT%TZ) train $dir start" >> runs/v3/logs/times.log
    bash data/synth/route-choice/v3/train.sh $1 $2 $3 >> runs/v3/logs/$1-$2-s$3.log 2>&1 || { echo "train $dir failed" >&2; return 1; }
    echo "$(date -u +%FT%TZ) train $dir end" >> runs/v3/logs/times.log
  fi
  rm -rf src/adalas/adapters/$alias && cp -r $dir/adapter src/adalas/adapters/$alias
  bash data/synth/route-choice/v3/score.sh --adapted $alias >> runs/v3/logs/sweep.log 2>&1 || { echo "sweep $alias failed" >&2; return 1; }
  echo "$(date -u +%FT%TZ) scored $alias" >> runs/v3/logs/times.log
}
seed=0; [ "$1" = B ] && seed=1
if [ "$1" = B ]; then
  # full depth (the reference) and the four routes off the shelf, while lane A builds the teacher cache
  bash data/synth/route-choice/v3/score.sh --routes 111000001111000100111111111111,111000011111000110111111100111,111011011111010110111111101111,111100111111000111111111101111 >> runs/v3/logs/sweep.log 2>&1
  until grep -qs "trainable parameters" runs/v3/logs/20-searched-s0.log; do sleep 60; done  # the teacher cache is built
fi
for c in "20 searched" "20 shipped" "24 searched" "24 shipped"; do candidate $c $seed || exit 1; done
echo "$(date -u +%FT%TZ) lane $1 done" >> runs/v3/logs/times.log
