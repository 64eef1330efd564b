"""Cut the shaped self-written rows into the choice set and the training set (issue 29, version 3).

    python data/synth/shapes/build.py    # from the repository root, after the `adalas synth --shape` runs

choice.heldout.jsonl: the first 48 rows of each shape's first chunk (dialogue.s11, article.s12,
input.s13) and the first 48 plain held-out rows (../smollm2-135m.heldout.jsonl), interleaved
(plain, dialogue, article, input, plain, ...) so that the first K rows cover every shape; each row
carries its `shape`. Choices only, never training.
train.jsonl: the plain training rows (../smollm2-135m.train.jsonl), then every other shaped row
(the first chunk's rows after the 48th, and every later chunk), without `finished` and `shape`.
"""
import json
from pathlib import Path

from adalas.io import read_jsonl

HERE = Path(__file__).parent
SHAPES = {"dialogue": 1, "article": 2, "input": 3}
HELD_OUT = 48


def rows(path: Path) -> list[dict]:
    return read_jsonl(path, strict=True)  # a finished file: missing, empty or torn is an error


def chunks(shape: str) -> list[Path]:
    """A shape's finished chunk files, first chunk first (the meta file says done)."""
    files = sorted(HERE.glob(f"{shape}.s*{SHAPES[shape]}.jsonl"), key=lambda p: p.name)
    return [f for f in files if json.loads(f.with_suffix(".meta.json").read_text())["done"]]


def main() -> None:
    plain = rows(HERE.parent / "smollm2-135m.heldout.jsonl")[:HELD_OUT]
    held = {"plain": [r | {"shape": "plain"} for r in plain]}
    train = [{k: r[k] for k in ("id", "instruction", "input", "output")}
             for r in rows(HERE.parent / "smollm2-135m.train.jsonl")]
    for shape in SHAPES:
        files = chunks(shape)
        if not files or not files[0].name.startswith(f"{shape}.s1"):
            raise SystemExit(f"{shape}: its first chunk ({shape}.s1{SHAPES[shape]}.jsonl) is not done")
        first = rows(files[0])
        held[shape] = [r | {"shape": shape} for r in first[:HELD_OUT]]
        for r in first[HELD_OUT:] + [r for f in files[1:] for r in rows(f)]:
            train.append({k: r[k] for k in ("id", "instruction", "input", "output")})
    choice = [held[s][i] for i in range(HELD_OUT) for s in ("plain", *SHAPES)]
    for name, out in (("choice.heldout.jsonl", choice), ("train.jsonl", train)):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out), encoding="utf-8")
        print(f"{name}: {len(out)} rows")


if __name__ == "__main__":
    main()
