#!/usr/bin/env bash
# version 6 (../README.md, "Version 6"): the dropout model's seventh version. v6/dropout.sh A|B: lane A trains seed 0
# and scores the shipped (fourth) version, lane B trains seed 1. Each trains the dropout recipe with version 3's
# data and lengths, 60% of sequences at full depth, 35% on the shipped routes (the 20-layer route listed twice, so
# that it takes two thirds of them), 5% layer dropout, 480 steps; then scores the model at full depth and on
# both shipped routes on the choice set (v3/score.sh). Resumable: run again.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case "$1" in A) seed=0;; B) seed=1;; *) echo "usage: $0 A|B" >&2; exit 2;; esac
r20="3, 4, 5, 6, 7, 12, 13, 14, 16, 17" r24="4, 5, 12, 13, 14, 25"  # smollm2-135m-adapted-20's and -24's routes
depth=$(.venv/bin/python - <<PY
import json
from adalas import DepthConfig
from adalas.recipes import load_recipe
depth = DepthConfig.parse(load_recipe("smollm2-135m-dropout")["depth"]).to_dict()
depth.update(full_depth_share=0.6, route_pool_share=0.35, route_pool=[[$r20], [$r20], [$r24]])
print(json.dumps(depth, separators=(",", ":")))
PY
)
[ -n "$depth" ] || { echo "dropout.sh: could not build the depth" >&2; exit 1; }
# the routes scored (the shipped adapters') must be the routes trained on
.venv/bin/python - <<PY || exit 1
import json, sys
for alias, skip in (("smollm2-135m-adapted-20", [$r20]), ("smollm2-135m-adapted-24", [$r24])):
    if json.load(open(f"src/adalas/adapters/{alias}/adalas_depth.json"))["skip_layers"] != skip:
        sys.exit(f"dropout.sh: {alias} no longer ships the route this plan trains on ({skip})")
PY
dir=runs/v6/dropout-s$seed alias=_v6-dropout-s$seed
mkdir -p runs/v6/logs
if [ ! -f $dir/adapter/adapter_model.safetensors ]; then
  echo "$(date -u +%FT%TZ) train $dir start" >> runs/v6/logs/times.log
  .venv/bin/adalas train --recipe smollm2-135m-dropout --data data/synth/shapes/train.jsonl --max_seq_length 512 \
    --prompt_fraction 0.75 --max_steps 480 --seed $seed --save_steps 20 --resume_from_checkpoint true \
    --depth "$depth" --output_dir $dir >> runs/v6/logs/dropout-s$seed.log 2>&1 || { echo "train $dir failed" >&2; exit 1; }
  echo "$(date -u +%FT%TZ) train $dir end" >> runs/v6/logs/times.log
fi
# the alias runs at full depth by default, as the shipped dropout model does
rm -rf src/adalas/adapters/$alias && cp -r $dir/adapter src/adalas/adapters/$alias
echo '{"mode": "full"}' > src/adalas/adapters/$alias/adalas_depth.json
here=data/synth/route-choice/v3
bash $here/score.sh --adapted $alias $alias@smollm2-135m-adapted-20 $alias@smollm2-135m-adapted-24 \
  >> runs/v6/logs/sweep.log 2>&1 || exit 1
echo "$(date -u +%FT%TZ) scored $alias" >> runs/v6/logs/times.log
if [ $seed = 0 ]; then
  bash $here/score.sh --adapted smollm2-135m-dropout smollm2-135m-dropout@smollm2-135m-adapted-20 \
    smollm2-135m-dropout@smollm2-135m-adapted-24 >> runs/v6/logs/sweep.log 2>&1 || exit 1
  echo "$(date -u +%FT%TZ) scored smollm2-135m-dropout" >> runs/v6/logs/times.log
fi
echo "$(date -u +%FT%TZ) dropout lane $1 done" >> runs/v6/logs/times.log
