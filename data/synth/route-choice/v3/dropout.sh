#!/usr/bin/env bash
# version 3's dropout model (data/synth/route-choice/README.md): v3/dropout.sh A|B, after v3/choose.py has written
# v3/choice.json. Lane A: seed 0, then the fourth version scored; lane B: seed 1. Each trains the dropout recipe with
# version 3's data and the chosen routes as its pool (resumes from its last checkpoint), then scores the model at full
# depth and on both chosen routes on the choice set (v3/score.sh). Resumable: run again.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case "$1" in A) seed=0;; B) seed=1;; *) echo "usage: $0 A|B" >&2; exit 2;; esac
here=data/synth/route-choice/v3
[ -f $here/choice.json ] || { echo "dropout.sh: $here/choice.json missing; run v3/choose.py first" >&2; exit 2; }
# the chosen candidates' aliases (their routes) and the recipe's depth with those routes as its pool
read -r route20 route24 depth < <(.venv/bin/python - <<'PY'
import json
from adalas import DepthConfig
from adalas.recipes import load_recipe
choice = json.load(open("data/synth/route-choice/v3/choice.json"))["choice"]
aliases = [f"_v3-{size}-{choice[size]['route']}-s{choice[size]['seed']}" for size in ("20", "24")]
pool = [json.load(open(f"src/adalas/adapters/{a}/adalas_depth.json"))["skip_layers"] for a in aliases]
depth = DepthConfig.parse(load_recipe("smollm2-135m-dropout")["depth"]).to_dict()
depth["route_pool"] = pool
print(*aliases, json.dumps(depth, separators=(",", ":")))
PY
)
[ -n "$depth" ] || { echo "dropout.sh: could not read the chosen routes" >&2; exit 1; }
dir=runs/v3/dropout-s$seed alias=_v3-dropout-s$seed
mkdir -p runs/v3/logs
if [ ! -f $dir/adapter/adapter_model.safetensors ]; then
  echo "$(date -u +%FT%TZ) train $dir start" >> runs/v3/logs/times.log
  .venv/bin/adalas train --recipe smollm2-135m-dropout --data data/synth/shapes/train.jsonl --max_seq_length 512 \
    --prompt_fraction 0.75 --seed $seed --save_steps 20 --resume_from_checkpoint true --depth "$depth" \
    --output_dir $dir >> runs/v3/logs/dropout-s$seed.log 2>&1 || { echo "train $dir failed" >&2; exit 1; }
  echo "$(date -u +%FT%TZ) train $dir end" >> runs/v3/logs/times.log
fi
# the alias runs at full depth by default, as the shipped dropout model does
rm -rf src/adalas/adapters/$alias && cp -r $dir/adapter src/adalas/adapters/$alias
echo '{"mode": "full"}' > src/adalas/adapters/$alias/adalas_depth.json
bash $here/score.sh --adapted $alias $alias@$route20 $alias@$route24 >> runs/v3/logs/sweep.log 2>&1 || exit 1
echo "$(date -u +%FT%TZ) scored $alias" >> runs/v3/logs/times.log
if [ $seed = 0 ]; then
  bash $here/score.sh --adapted smollm2-135m-dropout smollm2-135m-dropout@$route20 smollm2-135m-dropout@$route24 \
    >> runs/v3/logs/sweep.log 2>&1 || exit 1
  echo "$(date -u +%FT%TZ) scored smollm2-135m-dropout" >> runs/v3/logs/times.log
fi
echo "$(date -u +%FT%TZ) dropout lane $1 done" >> runs/v3/logs/times.log
