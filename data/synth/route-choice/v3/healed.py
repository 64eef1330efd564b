"""A third score for the rank study (`../README.md`, "Does the search's score rank trained routes?"), added
before any of its routes trained: the KL to full depth after a cross-fitted linear correction of what the head
reads (`RouteScorer.healed_kl`), a training-free guess at what adaptation recovers. On the rows and settings of
version 3's route search (the choice set's first 48 rows, 32 response tokens, prompt at full depth), for the
rank study's ten routes; the plain KL is computed again beside it and must equal the search's record. Run from
the repository root, one thread (about 20 minutes):

    python data/synth/route-choice/v3/healed.py    # -> data/synth/route-choice/v3/healed.json
"""
import json
import sys
from pathlib import Path

from adalas.data import load_examples
from adalas.hub import load_tokenizer
from adalas.io import atomic_write_json
from adalas.model import AdalasForCausalLM
from adalas.route_search import RouteScorer, prepare_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rank_study import HERE, ROUTES, search_scores  # noqa: E402  (the script beside this one)


def main() -> dict:
    examples = load_examples("data/synth/shapes/choice.heldout.jsonl", limit=48)
    model, tok = AdalasForCausalLM.from_pretrained("smollm2-135m"), load_tokenizer("smollm2-135m")
    rows = prepare_rows(examples, tok, response_tokens=32, prompt_format="auto", max_seq_length=768)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    scorer = RouteScorer(model, rows, pad_token_id=pad, batch_size=8, skip_prompt=False)
    recorded = search_scores()
    out = {}
    for skip in ROUTES:
        name = "-".join(map(str, skip))
        kl = scorer(skip).kl
        if abs(kl - recorded[name]["kl"]) > 1e-4 * recorded[name]["kl"]:
            raise SystemExit(f"healed: route {name}: KL {kl:.6f} here, {recorded[name]['kl']:.6f} in the search's "
                             f"record: not the search's rows or model")
        out[name] = {"skip": skip, "kl": kl, "healed_kl": scorer.healed_kl(skip)}
        print(json.dumps(out[name]), flush=True)
    atomic_write_json(HERE / "healed.json", out)
    return out


if __name__ == "__main__":
    main()
