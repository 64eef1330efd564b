#!/usr/bin/env bash
# version 3's recipe (data/synth/route-choice/README.md): v3/train.sh SIZE ROUTE SEED [OUT_DIR [adalas train flags]]
# ROUTE: shipped, searched, or a skip list (3,4,7); OUT_DIR: default runs/v3/SIZE-ROUTE-sSEED.
# e.g. v3/train.sh 20 searched 0; the rank study: v3/train.sh 20 3,4,7,... 0 runs/v3-rank/NAME --max_steps 40.
# Resumes from the last checkpoint when run again.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
usage() { echo "usage: $0 20|24 shipped|searched|SKIP,LIST SEED [OUT_DIR [flags]]" >&2; exit 2; }
[ $# -ge 3 ] || usage
case "$1-$2" in
  20-shipped) skip="3,4,5,6,7,12,13,14,16,17";; 20-searched) skip="3,4,5,6,12,13,14,17,25,26";;
  24-shipped) skip="3,6,12,14,17,25";; 24-searched) skip="4,5,12,13,14,25";;
  20-*|24-*) [[ $2 =~ ^[0-9]+(,[0-9]+)*$ ]] && skip=$2 || usage;;
  *) usage;;
esac
size=$1 route=$2 seed=$3 out=${4:-runs/v3/$1-$2-s$3}
shift $(( $# < 4 ? $# : 4 ))
.venv/bin/adalas train --recipe smollm2-135m-adapted-$size --data data/synth/shapes/train.jsonl \
  --max_seq_length 512 --prompt_fraction 0.75 --seed $seed --save_steps 20 --resume_from_checkpoint true \
  --depth "{\"mode\": \"static_skip\", \"skip_layers\": [$skip]}" --output_dir $out "$@"
