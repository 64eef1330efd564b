#!/usr/bin/env bash
# version 3's held-out score (data/synth/route-choice/README.md): ROUGE-L F against full depth's own output on
# the 192-row choice set, 64 new tokens, batch 16, fp32, into one sweep directory shared by every candidate
# (full depth runs once), one sweep at a time (flock). v3/score.sh --adapted ALIAS | --routes ROUTES
# The sweep's rows, without their prompts, are kept in v3/choice-sweep/ (committed): a fresh checkout starts
# from them (`adalas.tasks.restore`), so a candidate is scored once.
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p runs/v3
sweep=runs/v3/choice-sweep kept=data/synth/route-choice/v3/choice-sweep
exec 9>runs/v3/choice.lock
flock 9
.venv/bin/python -c "import sys; from adalas.tasks import restore; restore(*sys.argv[1:])" $kept $sweep || exit 1
.venv/bin/adalas sweep --data data/synth/shapes/choice.heldout.jsonl --max-new-tokens 64 --batch-size 16 \
  --reference full --strategies full --no-progress --out $sweep "$@" || exit 1
.venv/bin/python -c "import sys; from adalas.tasks import publish; publish(*sys.argv[1:])" $sweep $kept
