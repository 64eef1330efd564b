#!/usr/bin/env bash
# version 3's candidates (data/synth/route-choice/README.md): data/synth/route-choice/v3/train.sh SIZE ROUTE SEED
# e.g. data/synth/route-choice/v3/train.sh 20 searched 0; resumes from the last checkpoint when run again
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case "$1-$2" in
  20-shipped) skip="[3,4,5,6,7,12,13,14,16,17]";; 20-searched) skip="[3,4,5,6,12,13,14,17,25,26]";;
  24-shipped) skip="[3,6,12,14,17,25]";; 24-searched) skip="[4,5,12,13,14,25]";;
  *) echo "usage: $0 20|24 shipped|searched SEED" >&2; exit 2;;
esac
.venv/bin/adalas train --recipe smollm2-135m-adapted-$1 --data data/synth/shapes/train.jsonl \
  --max_seq_length 512 --prompt_fraction 0.75 --seed $3 --save_steps 20 \
  --depth "{\"mode\": \"static_skip\", \"skip_layers\": $skip}" --output_dir runs/v3/$1-$2-s$3
