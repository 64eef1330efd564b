"""Instruction data that a model writes itself, answered by the same model at full depth.

No dataset is needed to adapt a model to a dynamic depth: the model has one inside it. As Magpie
does, we render the chat template up to the start of the user's turn and let the model *sample*
that turn; its own greedy answer at full depth is the response (and the full-depth model is the
teacher that skipped routes learn to match, see `adalas.distill`).

Notable:
- Work goes in rounds of `batch_size` sampled prompts. Round r samples with seed (seed, r), so a
  killed run resumes at the first unfinished round and writes the same bytes as an unbroken one.
  `FILE.meta.json` (written atomically after each round's rows are flushed) holds the settings,
  the counters and the rounds done; rows beyond what it accounts for are dropped on resume.
- Filters, in this order, each drop counted in the meta file: unfinished (no end-of-turn within
  `max_prompt_tokens`); built-in (the same normalized text as a built-in instruction, with or without
  its input, or a shared word 8-gram with a built-in row's instruction, input or output: the built-in
  set is evaluation data and must not leak into training); test (a shared word 8-gram with any text
  of a row of the `exclude` files, e.g. the real test sets: checked on the prompt and on the answer);
  short; long; duplicate among the kept prompts (same normalized text, or a shared word 8-gram).
- `--prompts FILE` replaces sampling with a user's prompts (JSONL/JSON with `instruction` and an
  optional `input`, or plain text, one prompt a line); the same filters apply.
- `shape` other than `plain` gives rows with the shape of real tasks' prompts, every text written by
  the model: `dialogue` (it writes a chat between two names about a topic; the instruction is the
  SAMSum loader's), `article` (a news article about a topic; the CNN/DailyMail loader's
  instruction), `input` (a text of some kind about a topic, and one of a fixed list of operations
  on it as the instruction). Names, topics, kinds and operations (`synth_shapes.yaml`, written for
  adalas) are drawn per row from (seed, round, row); the text is sampled with the round's seed
  (temperature 0.7 and repetition penalty 1.15 unless set: at 1.0 a 135M model writes word salad, or
  loops) and capped at `max_source_tokens`. A text cut by the cap keeps its whole messages or
  sentences (`texts_cut`); a dialogue keeps its 'Name: message' lines, one a line, as in SAMSum
  (`adalas.synth_shapes`). The row is answered greedily at full depth, in the prompt format
  evaluation uses, capped at its real task's new-token cap; an answer cut by the cap is kept, with
  `"finished": false`. Filters, in order: no whole message or sentence (`dropped_unfinished`);
  built-in and test (on the text, and on instruction + text, which is the user turn; the
  instruction alone is not checked for an equal text, since a summary instruction equals the test
  sets' by design); short; long (`min/max_source_words`); a text that loops (a word 8-gram twice,
  `dropped_repetitive`); malformed (a dialogue of fewer than two messages or one speaker); duplicate
  text; then an empty answer, or one that shares an 8-gram with a test set.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from .data import Example, adds_bos, file_sha256, load_examples, make_collator, tokenize_prompt
from .io import atomic_write_json, atomic_write_text
# the shape rules live in synth_shapes; shape_definition and SHAPE_ANSWER_TOKENS are re-exported for callers
from .synth_shapes import (MAX_SOURCE_TOKENS, SHAPE_ANSWER_TOKENS, SHAPE_REPETITION_PENALTY, SHAPE_TEMPERATURE,  # noqa: F401
                           SHAPES, SOURCE_WORDS, Request, shape_definition, shape_digest, source_text,
                           well_formed)
from .synth_shapes import shape_requests as _shape_requests

NGRAM = 8
DROP_COUNTERS = ("dropped_short", "dropped_long", "dropped_unfinished", "dropped_duplicate", "dropped_builtin",
                 "dropped_test", "dropped_unanswered")
# in the meta file of a shape other than plain (texts_cut counts texts kept in part, not a drop)
SHAPE_COUNTERS = ("dropped_malformed", "dropped_repetitive")
_SLOT = "\ue000adalas-user-turn\ue000"


@dataclass(frozen=True)
class SynthSettings:
    """Everything that decides the bytes written (a resumed run must match them)."""

    model: str = "smollm2-135m"
    n: int = 1500
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int | None = None  # the answer; None: 128 for plain, the real task's cap for a shape
    max_prompt_tokens: int = 96     # the sampled user turn
    min_prompt_words: int = 4
    max_prompt_words: int = 60
    temperature: float | None = None  # None: 1.0 for plain, SHAPE_TEMPERATURE for the other shapes
    top_p: float = 0.95
    repetition_penalty: float | None = None  # sampling a shape's texts; None: 1.0 plain, SHAPE_REPETITION_PENALTY
    prompts: str | None = None      # a user's prompt file instead of sampling
    prompts_sha256: str | None = None
    exclude: tuple[str, ...] = ()   # evaluation files (e.g. the real test sets) whose text must not leak
    exclude_sha256: tuple[str, ...] = ()
    # the shape of the rows; the settings below are None for plain and filled in for the others
    shape: str = "plain"
    max_source_tokens: int | None = None  # the text the model writes (dialogue, article, input text)
    min_source_words: int | None = None
    max_source_words: int | None = None
    shape_sha256: str | None = None       # what the shape draws from (synth_shapes.yaml)

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"shape: choose from {', '.join(SHAPES)}, got {self.shape!r}")
        if self.temperature is None:
            object.__setattr__(self, "temperature", 1.0 if self.shape == "plain" else SHAPE_TEMPERATURE)
        if self.max_new_tokens is None:
            object.__setattr__(self, "max_new_tokens", SHAPE_ANSWER_TOKENS.get(self.shape, 128))
        if self.shape == "plain" and self.repetition_penalty not in (None, 1.0):
            raise ValueError("repetition_penalty: only for a shape other than plain")
        if self.repetition_penalty is None:
            object.__setattr__(self, "repetition_penalty", 1.0 if self.shape == "plain" else SHAPE_REPETITION_PENALTY)
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty: must be > 0, got {self.repetition_penalty}")
        source = ("max_source_tokens", "min_source_words", "max_source_words", "shape_sha256")
        if self.shape == "plain":
            given = [name for name in source if getattr(self, name) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only for a shape other than plain")
        else:
            if self.prompts:
                raise ValueError(f"prompts: only for shape plain (shape {self.shape} writes its own texts)")
            lo, hi = SOURCE_WORDS[self.shape]
            for name, value in (("max_source_tokens", MAX_SOURCE_TOKENS), ("min_source_words", lo),
                                ("max_source_words", hi), ("shape_sha256", shape_digest(self.shape))):
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
            for name in source[:3]:
                if getattr(self, name) < 1:
                    raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
            if self.min_source_words > self.max_source_words:
                raise ValueError(f"min_source_words ({self.min_source_words}) > max_source_words "
                                 f"({self.max_source_words})")
        for name in ("n", "batch_size", "max_new_tokens", "max_prompt_tokens", "min_prompt_words",
                     "max_prompt_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.min_prompt_words > self.max_prompt_words:
            raise ValueError(f"min_prompt_words ({self.min_prompt_words}) > max_prompt_words ({self.max_prompt_words})")
        if not self.temperature > 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")


# ---------------------------------------------------------------------------------------------
# Text normalisation and near-duplicates

def words(text: str) -> list[str]:
    """Lowercased words (letters and digits), the unit of duplicate detection.

    >>> words("Write a Poem, about cats!")
    ['write', 'a', 'poem', 'about', 'cats']
    """
    return re.findall(r"[a-z0-9]+", text.lower())


def ngrams(tokens: Sequence[str], n: int = NGRAM) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def loops(text: str) -> bool:
    """Whether a word 8-gram occurs twice in `text` (the way a small model's text runs on)."""
    w = words(text)
    return len(ngrams(w)) < len(w) - NGRAM + 1


class NearDuplicates:
    """Remembers texts; `seen(text)` says whether a text equals one of them after normalisation or
    shares a word n-gram with one."""

    def __init__(self, n: int = NGRAM):
        self.n = n
        self.texts: set[str] = set()
        self.grams: set[tuple[str, ...]] = set()

    def add(self, text: str) -> None:
        w = words(text)
        self.texts.add(" ".join(w))
        self.grams |= ngrams(w, self.n)

    def seen(self, text: str) -> bool:
        w = words(text)
        return " ".join(w) in self.texts or not ngrams(w, self.n).isdisjoint(self.grams)


def test_filter(files: Sequence[str]) -> NearDuplicates:
    """Every text of every row of evaluation files (instruction, input or dialogue or article, and
    reference): a word 8-gram shared with any of them means their text would leak into training."""
    seen = NearDuplicates()
    for f in files:
        for ex in load_examples(str(f)):
            for text in (ex.instruction, ex.context, ex.response):
                if text:
                    seen.add(text)
    return seen


def builtin_filter() -> NearDuplicates:
    """The built-in evaluation rows: instruction, input and output each (an 8-gram of any of them
    in a prompt means the prompt leaks an evaluation row)."""
    seen = NearDuplicates()
    for ex in load_examples("builtin"):
        seen.add(" ".join(t for t in (ex.instruction, ex.context) if t))
        seen.add(ex.instruction)  # an instruction alone, even a short generic one, is a leak too
        seen.add(ex.response)
    return seen


# ---------------------------------------------------------------------------------------------
# Sampling the user turn

def user_turn(tokenizer) -> tuple[list[int], int]:
    """(the chat template's tokens up to the user's message, the token that ends the user's turn)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("synth: the tokenizer has no chat template to sample a user turn from; "
                         "pass --prompts FILE instead")
    text = tokenizer.apply_chat_template([{"role": "user", "content": _SLOT}], tokenize=False,
                                         add_generation_prompt=False)
    if text.count(_SLOT) != 1:
        raise ValueError("synth: the chat template does not place the user message verbatim; pass --prompts FILE")
    before, after = text.split(_SLOT)
    end = tokenizer.encode(after, add_special_tokens=False)
    if not end:
        raise ValueError("synth: the chat template writes nothing after the user message; pass --prompts FILE")
    prefix = tokenizer.encode(before, add_special_tokens=False)
    if adds_bos(tokenizer) and not before.startswith(tokenizer.bos_token):  # as prompts are tokenized
        prefix = [tokenizer.bos_token_id] + prefix
    return prefix, end[0]


def round_seed(seed: int, round_index: int) -> int:
    """A seed per round, independent of how many rounds ran before in this process."""
    digest = hashlib.sha256(f"adalas-synth:{seed}:{round_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def sample_prompts(model, tokenizer, settings: SynthSettings, round_index: int) -> list[str | None]:
    """`batch_size` sampled user turns; None where the turn did not end within max_prompt_tokens."""
    prefix, end = user_turn(tokenizer)
    ids = torch.tensor([prefix] * settings.batch_size, device=model.device)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                         temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                         max_new_tokens=settings.max_prompt_tokens, eos_token_id=end,
                         seed=round_seed(settings.seed, round_index))
    prompts: list[str | None] = []
    for row in out[:, len(prefix):].tolist():
        if end not in row:
            prompts.append(None)
            continue
        prompts.append(tokenizer.decode(row[:row.index(end)], skip_special_tokens=True).strip())
    return prompts


@torch.no_grad()
def _complete(model, tokenizer, examples: Sequence[Example], max_new_tokens: int,
              **options) -> list[tuple[str, bool]]:
    """(the model's reply, whether it ended within max_new_tokens) to each example's prompt, in the
    prompt format evaluation uses; greedy unless `options` sample."""
    collate = make_collator(tokenizer, "left")
    enc = collate([tokenize_prompt(ex, tokenizer) for ex in examples])
    ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                         **(options or {"do_sample": False}))
    eos = model.model.generation_config.eos_token_id
    eos = set([eos] if isinstance(eos, int) else (eos or []))
    replies = []
    for row in out[:, ids.shape[1]:].tolist():
        n = next((j for j, t in enumerate(row) if t in eos), len(row))
        replies.append((tokenizer.decode(row[:n], skip_special_tokens=True).strip(), n < len(row)))
    return replies


def answer(model, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy answers at the model's current depth, in the prompt format evaluation uses."""
    return [text for text, _ in _complete(model, tokenizer, [Example("", p, "", "", "alpaca") for p in prompts],
                                          max_new_tokens)]


# ---------------------------------------------------------------------------------------------
# Rows with the shape of real tasks: a text the model writes, and an instruction on it

def shape_requests(settings: SynthSettings, round_index: int) -> list[Request]:
    """The round's `batch_size` requests: names, topic, kind and instruction drawn per row."""
    return _shape_requests(settings.shape, settings.seed, settings.batch_size, round_index)


@torch.no_grad()
def write_sources(model, tokenizer, settings: SynthSettings, requests: Sequence[Request],
                  round_index: int) -> list[tuple[str, bool]]:
    """(the text the model writes, whether it ended within max_source_tokens) for each request,
    sampled with the round's seed (and a mild repetition penalty: the texts, not the answers)."""
    options = dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                   seed=round_seed(settings.seed, round_index))
    if settings.repetition_penalty != 1.0:
        options["repetition_penalty"] = settings.repetition_penalty
    return _complete(model, tokenizer, [Example("", r.prompt, "", "", "alpaca") for r in requests],
                     settings.max_source_tokens, **options)


def answer_inputs(model, tokenizer, rows: Sequence[tuple[str, str]], max_new_tokens: int) -> list[tuple[str, bool]]:
    """(greedy answer, whether it ended within max_new_tokens) to (instruction, input) rows, as evaluation
    prompts them (in the chat format: the user turn is instruction + blank line + input)."""
    return _complete(model, tokenizer, [Example("", i, x, "", "alpaca") for i, x in rows], max_new_tokens)


# ---------------------------------------------------------------------------------------------
# Prompts from a file

def read_prompt_file(path: Path) -> list[str]:
    """A user's prompts: JSON/JSONL rows with `instruction` (and optional `input`), or plain text lines."""
    if not path.is_file():
        raise ValueError(f"--prompts: {str(path)!r} is not a file")
    if path.suffix in (".json", ".jsonl"):
        return [" ".join(t for t in (ex.instruction, ex.context) if t)
                for ex in load_examples(str(path), task="alpaca", require_response=False)]
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError:
        raise ValueError(f"--prompts: {str(path)!r} is not UTF-8 text") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts: {str(path)!r} holds no prompt")
    return prompts


# ---------------------------------------------------------------------------------------------
# The run

def meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json") if out.suffix != ".jsonl" else out.with_suffix(".meta.json")


def _new_state(settings: SynthSettings) -> dict:
    counters = DROP_COUNTERS + (SHAPE_COUNTERS + ("texts_cut",) if settings.shape != "plain" else ())
    return {"settings": asdict(settings), "rounds_done": 0, "rows": 0, "sampled": 0,
            **{k: 0 for k in counters}, "done": False, "wall_s": 0.0}


def _load_state(out: Path, settings: SynthSettings) -> tuple[dict, list[dict]]:
    """The state to resume from, and the rows it accounts for (extra rows from a kill are dropped)."""
    meta = meta_path(out)
    if not meta.is_file():
        if out.exists() and out.stat().st_size:
            raise ValueError(f"--out: {str(out)!r} exists without {meta.name}; pass a new path")
        return _new_state(settings), []
    state = json.loads(meta.read_text(encoding="utf-8"))
    now, was, default = _jsonable(asdict(settings)), state.get("settings", {}), _jsonable(asdict(SynthSettings()))
    # a setting added since the file was made counts as its default (earlier files keep resuming)
    diff = sorted(k for k, v in now.items() if was.get(k, default[k]) != v)
    if diff:
        raise ValueError(f"--out: {str(out)!r} was made with other settings ({', '.join(diff)}); "
                         f"pass a new path or the same settings")
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line.strip()] \
        if out.exists() else []
    if len(rows) < state["rows"]:
        raise ValueError(f"--out: {str(out)!r} has {len(rows)} rows, fewer than {meta.name} records "
                         f"({state['rows']}); pass a new path")
    return state, rows[:state["rows"]]


def max_rounds(settings: SynthSettings) -> int:
    """Give up after this many sampling rounds (a model that never finishes a turn must not loop forever;
    a whole text written by a small model passes less often than a user turn)."""
    return 10 + (10 if settings.shape == "plain" else 20) * -(-settings.n // settings.batch_size)


def drops(state: dict) -> str:
    return ", ".join(f"{k.removeprefix('dropped_')} {state[k]}" for k in DROP_COUNTERS + SHAPE_COUNTERS
                     if state.get(k))


def _jsonable(obj: dict) -> dict:
    return json.loads(json.dumps(obj))  # tuples as lists, as the meta file holds them


def _dumps(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=False)


class PromptFilter:
    """Applies the filters in order and counts each drop into `state`."""

    def __init__(self, settings: SynthSettings, state: dict, kept: Iterable[str]):
        self.settings, self.state = settings, state
        self.builtin = builtin_filter()
        self.test = test_filter(settings.exclude)
        self.kept = NearDuplicates()
        for text in kept:
            self.kept.add(text)

    def reason(self, prompt: str | None) -> str | None:
        if prompt is None:
            return "dropped_unfinished"
        if self.builtin.seen(prompt):  # first, so that every leak of the evaluation set is counted
            return "dropped_builtin"
        if self.test.seen(prompt):
            return "dropped_test"
        n = len(words(prompt))
        if n < self.settings.min_prompt_words:
            return "dropped_short"
        if n > self.settings.max_prompt_words:
            return "dropped_long"
        if self.kept.seen(prompt):
            return "dropped_duplicate"
        return None

    def keep(self, prompts: Sequence[str | None]) -> list[str]:
        kept = []
        for p in prompts:
            self.state["sampled"] += 1
            why = self.reason(p)
            if why is None:
                self.kept.add(p)
                kept.append(p)
            else:
                self.count(why)
        return kept

    def count(self, why: str) -> None:
        self.state[why] = self.state.get(why, 0) + 1

    def source_reason(self, instruction: str, text: str) -> str | None:
        """Why a row's input (from the model's dialogue, article or text) is dropped, or None. The user
        turn (instruction + text) and the text are checked for leaks; the instruction alone is ours."""
        if not text:
            return "dropped_unfinished"  # a text cut by its cap with no whole message or sentence in it
        turn = f"{instruction}\n\n{text}"
        if self.builtin.seen(turn) or self.builtin.seen(text):
            return "dropped_builtin"
        if self.test.seen(turn) or self.test.seen(text):
            return "dropped_test"
        n = len(words(text))
        if n < self.settings.min_source_words:
            return "dropped_short"
        if n > self.settings.max_source_words:
            return "dropped_long"
        if loops(text):
            return "dropped_repetitive"
        if not well_formed(self.settings.shape, text):
            return "dropped_malformed"
        if self.kept.seen(text):
            return "dropped_duplicate"
        return None

    def keep_sources(self, requests: Sequence[Request],
                     written: Sequence[tuple[str, bool]]) -> list[tuple[int, str, str]]:
        """(row in the round, instruction, row input) of the model's texts that pass; a text cut by its
        cap keeps its whole messages or sentences (counted in texts_cut)."""
        kept = []
        for j, (request, (raw, finished)) in enumerate(zip(requests, written)):
            self.state["sampled"] += 1
            if not finished:
                self.count("texts_cut")
            text = source_text(self.settings.shape, raw, finished)
            why = self.source_reason(request.instruction, text)
            if why is None:
                self.kept.add(text)
                kept.append((j, request.instruction, text))
            else:
                self.count(why)
        return kept


def _plain_round(model, tokenizer, settings: SynthSettings, filt: PromptFilter, r: int,
                 sampled: Sequence[str | None]) -> list[dict]:
    """Round r of shape plain: the sampled (or given) prompts, filtered, then answered."""
    state = filt.state
    prompts = filt.keep(sampled)[:settings.n - state["rows"]]
    answers = answer(model, tokenizer, prompts, settings.max_new_tokens) if prompts else []
    new = []
    for j, (p, a) in enumerate(zip(prompts, answers)):
        if not a or filt.test.seen(a):
            filt.count("dropped_unanswered" if not a else "dropped_test")
            state.setdefault("unanswered_prompts", []).append(p)
            continue
        new.append({"id": f"synth-{settings.seed}-{r:05d}-{j:02d}", "instruction": p, "input": "", "output": a})
    return new


def _shape_round(model, tokenizer, settings: SynthSettings, filt: PromptFilter, r: int) -> list[dict]:
    """Round r of a shape other than plain: the texts the model writes, filtered, then answered."""
    state = filt.state
    requests = shape_requests(settings, r)
    kept = filt.keep_sources(requests, write_sources(model, tokenizer, settings, requests, r))
    kept = kept[:settings.n - state["rows"]]
    answers = answer_inputs(model, tokenizer, [(i, x) for _, i, x in kept], settings.max_new_tokens) if kept else []
    new = []
    for (j, instruction, text), (a, finished) in zip(kept, answers):
        why = "dropped_unanswered" if not a else "dropped_test" if filt.test.seen(a) else None
        if why:
            filt.count(why)
            state.setdefault("unanswered_prompts", []).append(text)
            continue
        # an answer cut by the cap is kept (evaluation cuts at the same cap) and says so
        new.append({"id": f"synth-{settings.shape}-{settings.seed}-{r:05d}-{j:02d}", "instruction": instruction,
                    "input": text, "output": a, "finished": finished})
    return new


def synthesize(model, tokenizer, settings: SynthSettings, out: str | Path, progress: bool = True) -> dict:
    """Write `settings.n` rows to `out` (resuming if it was started), and return the meta state."""
    import time

    from tqdm.auto import tqdm

    out = Path(out)
    given = read_prompt_file(Path(settings.prompts)) if settings.prompts else None
    if given is None and settings.shape == "plain":
        user_turn(tokenizer)  # a tokenizer without a chat template fails here, before anything is written
    state, rows = _load_state(out, settings)
    if state["done"]:
        return state
    atomic_write_text(out, "".join(_dumps(r) + "\n" for r in rows))  # drop rows a kill left unaccounted
    # the duplicate filter remembers every prompt (or written text) it let through, answered or not,
    # so a resumed run filters exactly as an unbroken one
    column = "instruction" if settings.shape == "plain" else "input"
    filt = PromptFilter(settings, state, [r[column] for r in rows] + state.get("unanswered_prompts", []))
    bar = tqdm(total=settings.n, initial=state["rows"], desc="synth", unit="row", disable=not progress)
    start = time.monotonic()
    # the fused weight copies are built once for every round's generate() calls (Family.hold_fused)
    with open(out, "a", encoding="utf-8") as f, model.family.hold_fused():
        while state["rows"] < settings.n:
            r = state["rounds_done"]
            if given is None and r >= max_rounds(settings):
                if settings.shape != "plain":
                    raise ValueError(f"synth: {state['rows']} of {settings.n} rows after {r} rounds "
                                     f"({state['sampled']} texts written; {drops(state)}); the model rarely "
                                     f"writes a usable {settings.shape}: loosen the filters (--max-source-tokens, "
                                     f"--min-source-words, --max-source-words)")
                raise ValueError(f"synth: {state['rows']} of {settings.n} rows after {r} rounds "
                                 f"({state['sampled']} prompts sampled; {drops(state)}); the model rarely "
                                 f"writes a usable user turn: pass --prompts FILE or loosen the filters")
            if settings.shape != "plain":
                new = _shape_round(model, tokenizer, settings, filt, r)
            else:
                if given is not None:
                    chunk = given[r * settings.batch_size:(r + 1) * settings.batch_size]
                    if not chunk:
                        break
                    sampled: list[str | None] = list(chunk)
                else:
                    sampled = sample_prompts(model, tokenizer, settings, r)
                new = _plain_round(model, tokenizer, settings, filt, r, sampled)
            f.write("".join(_dumps(row) + "\n" for row in new))
            f.flush()
            state["rows"] += len(new)
            state["rounds_done"] = r + 1
            state["wall_s"] = round(state["wall_s"] + time.monotonic() - start, 1)
            start = time.monotonic()
            atomic_write_json(meta_path(out), state)
            bar.update(len(new))
    bar.close()
    state["done"] = True
    state["data_sha256"] = file_sha256(out)
    atomic_write_json(meta_path(out), state)
    return state


