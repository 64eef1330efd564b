"""The paper adalas reproduces, in one table: Glavas et al., "Dynamic layer selection in decoder-only
transformers" (NeurIPS 2024 ENLSP workshop, arXiv 2410.20022), as docs/design.md summarises it.

Reports quote it from here: its setting beside a sweep's (`adalas.report`) and its findings beside
the study's experiments E1-E4 (`adalas.study`).
"""
from __future__ import annotations

PAPER = {
    # the setting of its headline result
    "model": "OPT-IML-1.3B (24 layers)", "fine_tuned": "yes, on each task",
    "budgets": "4, 8, 12 of 24 layers (17-50% of the depth)", "data": "Alpaca, CNN/DailyMail, SAMSum test splits",
    "choices": "uniform skipping at 4, 8, 12 and all 24 layers", "match": "23.3% of the layers (Alpaca)",
    "match_fraction": 0.233, "full": "0.342 (Alpaca)",
    # its findings, one per experiment of `adalas study`
    "findings": {
        "E1": "Layer skipping holds up better than early exit (fine-tuned OPT models, Alpaca / CNN-DM / SAMSum).",
        "E2": "Per-token controllers that read the hidden state do no better than controllers that see no input.",
        "E3": "Per sequence, an oracle choosing among uniform skipping to 4, 8, 12 or 24 layers matches the full "
              "model with 23.3% of the layers (OPT-IML-1.3B, Alpaca).",
        "E4": "Not measured in the paper, which points to per-sequence allocation as the way forward: a router that "
              "picks each sequence's route from its prompt, against input-blind choices at the same depth.",
    },
}
