"""Teacher-forced KL to full depth (and top-1 agreement) of the shipped and the searched routes, on the
rows and settings of version 3's route search (`route-N.json`): the first 48 rows of the choice set,
32 response tokens each, prompt at full depth. Run from the repository root:

    python data/synth/route-choice/v3/score_routes.py    # -> data/synth/route-choice/v3/routes.json
"""
import json

from adalas.data import load_examples
from adalas.hub import load_tokenizer
from adalas.io import atomic_write_json
from adalas.model import AdalasForCausalLM
from adalas.route_search import RouteScorer, prepare_rows

ROUTES = {"shipped adapted-20": [3, 4, 5, 6, 7, 12, 13, 14, 16, 17],
          "searched 20": json.load(open("data/synth/route-choice/v3/route-20.json"))["skip"],
          "shipped adapted-24": [3, 6, 12, 14, 17, 25],
          "searched 24": json.load(open("data/synth/route-choice/v3/route-24.json"))["skip"]}

examples = load_examples("data/synth/shapes/choice.heldout.jsonl", limit=48)
model, tok = AdalasForCausalLM.from_pretrained("smollm2-135m"), load_tokenizer("smollm2-135m")
rows = prepare_rows(examples, tok, response_tokens=32, prompt_format="auto", max_seq_length=768)
pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
score = RouteScorer(model, rows, pad_token_id=pad, batch_size=8, skip_prompt=False)
out = {name: {"skip": skip, "kl": (r := score(skip)).kl, "top1_agreement": r.top1_agreement}
       for name, skip in ROUTES.items()}
atomic_write_json("data/synth/route-choice/v3/routes.json", out)
print(json.dumps(out, indent=1))
