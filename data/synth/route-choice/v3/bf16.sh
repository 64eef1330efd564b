#!/usr/bin/env bash
# bf16 or fp32 training (data/synth/route-choice/README.md, "bf16 training"): the 20-layer searched candidate
# under bf16 autocast, seeds 0 and 1, each scored on the choice set as it lands. Resumable: run again.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
mkdir -p runs/v3-bf16/logs
for seed in 0 1; do
  dir=runs/v3-bf16/20-searched-s$seed alias=_v3bf16-20-searched-s$seed
  if [ ! -f $dir/adapter/adapter_model.safetensors ]; then
    echo "$(date -u +%FT%TZ) train $dir start" >> runs/v3-bf16/logs/times.log
    bash data/synth/route-choice/v3/train.sh 20 searched $seed $dir --bf16 true >> runs/v3-bf16/logs/s$seed.log 2>&1 \
      || { echo "train $dir failed" >&2; exit 1; }
    echo "$(date -u +%FT%TZ) train $dir end" >> runs/v3-bf16/logs/times.log
  fi
  rm -rf src/adalas/adapters/$alias && cp -r $dir/adapter src/adalas/adapters/$alias
  bash data/synth/route-choice/v3/score.sh --adapted $alias >> runs/v3-bf16/logs/sweep.log 2>&1 || exit 1
  echo "$(date -u +%FT%TZ) scored $alias" >> runs/v3-bf16/logs/times.log
done
