#!/usr/bin/env bash
# version 5 (../README.md, "Version 5"): the dropout model's sixth version. v5/dropout.sh A|B: lane A trains seed 0
# and scores the shipped (fourth) version, lane B trains seed 1. Each trains the dropout recipe with version 3's
# data and lengths, 40% of sequences at full depth, 50% on the shipped routes (the 20-layer route listed twice, so
# that it takes two thirds of them), 10% layer dropout, 320 steps; then scores the model at full depth and on
# both shipped routes on the choice set (v3/score.sh). Resumable: run again.
# A later version runs this script with its own name, shares and steps: v5/dropout.sh A|B [VERSION FULL ROUTES STEPS]
# (v6/dropout.sh: v6 0.6 0.35 480); the rest of its sequences get layer dropout.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case "$1" in A) seed=0;; B) seed=1;; *) echo "usage: $0 A|B [VERSION FULL ROUTES STEPS]" >&2; exit 2;; esac
version=${2:-v5} full_share=${3:-0.4} route_share=${4:-0.5} steps=${5:-320}
r20="3, 4, 5, 6, 7, 12, 13, 14, 16, 17" r24="4, 5, 12, 13, 14, 25"  # smollm2-135m-adapted-20's and -24's routes
depth=$(.venv/bin/python - <<PY
import json
from adalas import DepthConfig
from adalas.recipes import load_recipe
depth = DepthConfig.parse(load_recipe("smollm2-135m-dropout")["depth"]).to_dict()
depth.update(full_depth_share=$full_share, route_pool_share=$route_share, route_pool=[[$r20], [$r20], [$r24]])
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
dir=runs/$version/dropout-s$seed alias=_$version-dropout-s$seed
mkdir -p runs/$version/logs
if [ ! -f $dir/adapter/adapter_model.safetensors ]; then
  echo "$(date -u +%FT%TZ) train $dir start" >> runs/$version/logs/times.log
  .venv/bin/adalas train --recipe smollm2-135m-dropout --data data/synth/shapes/train.jsonl --max_seq_length 512 \
    --prompt_fraction 0.75 --max_steps $steps --seed $seed --save_steps 20 --resume_from_checkpoint true \
    --depth "$depth" --output_dir $dir >> runs/$version/logs/dropout-s$seed.log 2>&1 || { echo "train $dir failed" >&2; exit 1; }
  echo "$(date -u +%FT%TZ) train $dir end" >> runs/$version/logs/times.log
fi
# the alias runs at full depth by default, as the shipped dropout model does
rm -rf src/adalas/adapters/$alias && cp -r $dir/adapter src/adalas/adapters/$alias
echo '{"mode": "full"}' > src/adalas/adapters/$alias/adalas_depth.json
here=data/synth/route-choice/v3
bash $here/score.sh --adapted $alias $alias@smollm2-135m-adapted-20 $alias@smollm2-135m-adapted-24 \
  >> runs/$version/logs/sweep.log 2>&1 || exit 1
echo "$(date -u +%FT%TZ) scored $alias" >> runs/$version/logs/times.log
if [ $seed = 0 ]; then
  bash $here/score.sh --adapted smollm2-135m-dropout smollm2-135m-dropout@smollm2-135m-adapted-20 \
    smollm2-135m-dropout@smollm2-135m-adapted-24 >> runs/$version/logs/sweep.log 2>&1 || exit 1
  echo "$(date -u +%FT%TZ) scored smollm2-135m-dropout" >> runs/$version/logs/times.log
fi
echo "$(date -u +%FT%TZ) dropout lane $1 done" >> runs/$version/logs/times.log
