"""`adalas export`: write a plain transformers checkpoint with the skipped layers removed.

    adalas export --model smollm2-135m --depth '{"mode": "static_skip", "skip_layers": [7, 15, 22]}' --out small

The result loads with `AutoModelForCausalLM.from_pretrained(out)` without adalas; its logits equal
adalas's with skip_prompt=true (every token, prompt included, runs the kept layers). Static modes
only: static_skip, early_exit, route (and full).
"""
from __future__ import annotations

import json
import sys

from ..cli import add_model_args, make_parser


def build_parser():
    p = make_parser("export", __doc__.splitlines()[0])
    add_model_args(p)
    p.add_argument("--depth", default=None,
                   help="static_skip, early_exit or route config: inline JSON or a JSON file "
                        "(default: the config saved in an adalas --model directory)")
    p.add_argument("--out", required=True, help="directory to write (must not exist, or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def main(argv: list[str]) -> int:
    from ..export import export_checkpoint

    args = build_parser().parse_args(argv)
    summary = export_checkpoint(args.model, args.depth, args.out, overwrite=args.overwrite, dtype=args.dtype,
                                device=args.device, allow_pickle=args.allow_pickle,
                                trust_remote_code=args.trust_remote_code)
    if "warning" in summary:
        print(f"adalas export: warning: {summary['warning']}", file=sys.stderr)
    print(json.dumps(summary))
    return 0
