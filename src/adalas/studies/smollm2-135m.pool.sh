#!/usr/bin/env bash
# The study's prerequisite (smollm2-135m.compute.md): train E3's model by its recipe, one torch thread,
# resumable (run again after a kill), and ship it as the alias smollm2-135m-dropout-pool at full depth:
#   bash src/adalas/studies/smollm2-135m.pool.sh
# Then commit src/adalas/adapters/smollm2-135m-dropout-pool/ (about 9.8 MB).
set -euo pipefail
cd "$(git -C "$(dirname "$0")" rev-parse --show-toplevel)"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
alias=smollm2-135m-dropout-pool run=runs/smollm2-135m-dropout-pool
target=src/adalas/adapters/$alias staging=src/adalas/adapters/.$alias.shipping
if [ ! -f $run/adapter/adapter_model.safetensors ]; then
  .venv/bin/adalas train --recipe $alias --save_steps 20 --resume_from_checkpoint true --report_to none \
    --disable_tqdm true --output_dir $run
fi
rm -rf $staging && cp -r $run/adapter $staging
echo '{"mode": "full"}' > $staging/adalas_depth.json   # its default depth; any route runs with --depth
rm -rf $target && mv $staging $target
echo "shipped $target: $(sha256sum $target/adapter_model.safetensors | cut -c1-12)"
