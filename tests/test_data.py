"""Data module: sources, splits, prompt formats, label masks, length budgets, cache, collator.

The tokenizer is a byte-level BPE trained in memory on a few strings (no network, well under a second).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from adalas import data as D
from adalas import data_sources
from adalas.data import Example
from adalas.data_sources import DataError, builtin_path, split_indices
from adalas.paths import cache_dir

TRAIN_TEXT = [
    D.ALPACA_INTRO_WITH_INPUT
    + "### Instruction:\nSummarize the text.\n\n### Input:\nsome text\n\n### Response:\n",
    "### Dialogue:\nAmanda: hi Tom\n\n### Summary:\n### Article:\nthe news ### Context:",
    "the quick brown fox jumps over the lazy dog, again and again. Hello world!",
]
CHAT_TEMPLATE = ("<s>{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _tokenizer(adds_bos: bool) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TRAIN_TEXT * 3, trainer)
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def tok():
    return _tokenizer(adds_bos=False)


@pytest.fixture(scope="module")
def bos_tok():
    return _tokenizer(adds_bos=True)


@pytest.fixture(scope="module")
def chat_tok():
    t = _tokenizer(adds_bos=True)
    t.chat_template = CHAT_TEMPLATE
    return t


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ALPACA_ROWS = [{"instruction": f"Task {i}.", "input": "" if i % 2 else f"input {i}", "output": f"answer {i}"}
               for i in range(10)]
EX = Example("0", "Summarize the text.", "some text", "the quick brown fox", "alpaca")


# --- prompt formats ---------------------------------------------------------------------------

def test_alpaca_and_native_templates():
    with_input = D.build_prompt(EX, "alpaca")
    assert with_input == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\nSummarize the text."
        "\n\n### Input:\nsome text\n\n### Response:\n")
    no_input = D.build_prompt(Example("0", "Name a color.", "", "red", "alpaca"), "alpaca")
    assert no_input == ("Below is an instruction that describes a task. Write a response that appropriately "
                        "completes the request.\n\n### Instruction:\nName a color.\n\n### Response:\n")
    assert D.build_prompt(EX, "native") == with_input  # Alpaca's native template is Alpaca
    samsum = D.build_prompt(Example("0", "x", "A: hi", "s", "samsum"), "native")
    assert samsum == "### Dialogue:\nA: hi\n\n### Summary:\n"
    cnn = D.build_prompt(Example("0", "x", "News.", "s", "cnn"), "native")
    assert cnn == "### Article:\nNews.\n\n### Summary:\n"
    dolly = D.build_prompt(Example("0", "Q?", "ctx", "a", "dolly"), "native")
    assert dolly == (with_input.replace("Summarize the text.", "Q?")
                     .replace("### Input:\nsome text", "### Context:\nctx"))
    assert D.build_prompt(Example("0", "Summarize.", "A: hi", "s", "samsum"), "alpaca").endswith(
        "### Instruction:\nSummarize.\n\n### Input:\nA: hi\n\n### Response:\n")


def test_auto_and_chat_formats(tok, chat_tok):
    assert D.build_prompt(EX, "auto", tok) == D.build_prompt(EX, "native")  # no chat template
    chat = D.build_prompt(EX, "auto", chat_tok)
    assert chat == "<s><|user|>Summarize the text.\n\nsome text</s><|assistant|>"
    assert D.build_prompt(EX, "chat", chat_tok) == chat
    with pytest.raises(ValueError, match="chat_template"):
        D.build_prompt(EX, "chat", tok)
    with pytest.raises(ValueError, match="prompt_format"):
        D.build_prompt(EX, "nope")


# --- tokenization -----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,tokenizer", [("alpaca", "tok"), ("native", "bos_tok"), ("chat", "chat_tok")])
def test_labels_mask_exactly_the_prompt(fmt, tokenizer, request):
    t = request.getfixturevalue(tokenizer)
    row = D.tokenize_example(EX, t, fmt, max_seq_length=512)
    prompt = D.tokenize_prompt(EX, t, fmt, max_prompt_tokens=256)["input_ids"]
    assert row["input_ids"][:len(prompt)] == prompt
    assert row["labels"].count(-100) == len(prompt)
    assert row["labels"][:len(prompt)] == [-100] * len(prompt)
    answer = row["labels"][len(prompt):]
    assert answer == row["input_ids"][len(prompt):]
    assert t.decode(answer) == EX.response + t.eos_token
    assert len(row["attention_mask"]) == len(row["input_ids"]) and set(row["attention_mask"]) == {1}
    assert t.decode(prompt, skip_special_tokens=False).endswith(
        "<|assistant|>" if fmt == "chat" else "### Response:\n")


def test_bos_only_when_the_tokenizer_adds_one(tok, bos_tok, chat_tok):
    assert D.tokenize_prompt(EX, tok, "alpaca")["input_ids"][0] != tok.bos_token_id
    assert D.tokenize_prompt(EX, bos_tok, "alpaca")["input_ids"][0] == bos_tok.bos_token_id
    ids = D.tokenize_prompt(EX, chat_tok, "chat")["input_ids"]  # the template writes <s> itself
    assert ids[0] == chat_tok.bos_token_id and ids[1] != chat_tok.bos_token_id


def test_long_instruction_is_cut_to_the_prompt_share_and_keeps_the_marker(bos_tok):
    ex = Example("0", "the lazy dog " * 200, "", "Hello world!", "alpaca")
    row = D.tokenize_example(ex, bos_tok, "alpaca", max_seq_length=128, prompt_fraction=0.5)
    n_prompt = row["labels"].count(-100)
    assert 60 <= n_prompt <= 64  # floor(128 * 0.5): the content fills the budget
    assert bos_tok.decode(row["input_ids"][:n_prompt]).endswith("the lazy dog\n\n### Response:\n")
    assert bos_tok.decode(row["labels"][n_prompt:]) == "Hello world!</s>"
    assert len(row["input_ids"]) <= 128


def test_long_context_shares_the_budget_with_a_short_instruction(tok):
    ex = Example("0", "Summarize the text.", "the quick brown fox " * 100, "ok", "alpaca")
    prompt = D.tokenize_prompt(ex, tok, "native", max_prompt_tokens=100)["input_ids"]
    text = tok.decode(prompt)
    assert 97 <= len(prompt) <= 100
    assert "### Instruction:\nSummarize the text.\n\n### Input:\nthe quick brown fox" in text  # whole
    assert text.endswith("\n\n### Response:\n")
    short = D.tokenize_prompt(EX, tok, "native", max_prompt_tokens=1000)["input_ids"]
    assert short == tok.encode(D.build_prompt(EX, "native"))  # nothing cut when it fits; one string


def test_long_response_is_cut_and_ends_with_eos(tok):
    ex = Example("0", "Name a color.", "", "the quick brown fox " * 100, "alpaca")
    row = D.tokenize_example(ex, tok, "alpaca", max_seq_length=96, prompt_fraction=0.5)
    assert len(row["input_ids"]) == 96
    assert row["input_ids"][-1] == row["labels"][-1] == tok.eos_token_id
    assert row["labels"][-2] != tok.eos_token_id


def test_chat_prompt_content_is_cut_and_generation_prompt_survives(chat_tok):
    ex = Example("0", "the lazy dog " * 100, "", "Hello", "alpaca")
    prompt = D.tokenize_prompt(ex, chat_tok, "auto", max_prompt_tokens=40)["input_ids"]
    assert 37 <= len(prompt) <= 40
    assert chat_tok.decode(prompt, skip_special_tokens=False).endswith("</s><|assistant|>")


def test_budget_errors(tok):
    with pytest.raises(ValueError, match="prompt budget"):
        D.tokenize_example(EX, tok, "alpaca", max_seq_length=20, prompt_fraction=0.5)
    with pytest.raises(ValueError, match="prompt_fraction"):
        D.tokenize_example(EX, tok, "alpaca", prompt_fraction=1.0)


# --- sources, splits, columns -----------------------------------------------------------------

def test_doctests():
    import doctest
    assert doctest.testmod(D).failed == 0
    assert doctest.testmod(data_sources).failed == 0


def test_split_indices_are_deterministic_disjoint_70_15_15():
    a, b = split_indices(1000), split_indices(1000)
    assert a == b
    assert [len(a[s]) for s in ("train", "validation", "test")] == [700, 150, 150]
    assert sorted(a["train"] + a["validation"] + a["test"]) == list(range(1000))
    assert split_indices(1000, seed=7)["test"] != a["test"]


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset replaced by an in-memory table; records what it was asked for."""
    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if name == "tatsu-lab/alpaca":
            return datasets.Dataset.from_list([{"instruction": f"do {i}", "input": "", "output": f"out {i}"}
                                               for i in range(100)])
        if name == "abisee/cnn_dailymail":
            return datasets.Dataset.from_list([{"id": f"c{i}", "article": f"news {i}",
                                                "highlights": "" if i == 1 else f"hl {i}"} for i in range(5)])
        if name == "someone/samsum":  # a re-upload: the task comes from its columns
            return datasets.Dataset.from_list([{"id": "s0", "dialogue": "A: hi", "summary": "A greets."}])
        raise FileNotFoundError(f"Dataset '{name}' doesn't exist on the Hub")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.setattr(datasets, "get_dataset_split_names", lambda name, config=None: ["train", "test"])
    return calls


def test_hub_alpaca_uses_the_fixed_split(fake_hub):
    test = D.load_examples("tatsu-lab/alpaca", split="test")
    train = D.load_examples("tatsu-lab/alpaca", split="train")
    val = D.load_examples("tatsu-lab/alpaca", split="validation")
    assert (len(train), len(val), len(test)) == (70, 15, 15)
    ids = [{e.id for e in s} for s in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert [e.id for e in test] == [str(i) for i in split_indices(100)["test"]]  # id = original row index
    assert all(e.task == "alpaca" and e.instruction == f"do {e.id}" for e in test)
    assert D.load_examples("tatsu-lab/alpaca", limit=3) == test[:3]
    assert fake_hub[0] == ("tatsu-lab/alpaca", None, "train")


def test_hub_cnn_uses_its_test_split_and_skips_invalid_rows(fake_hub):
    rows = D.load_examples("abisee/cnn_dailymail")
    assert fake_hub == [("abisee/cnn_dailymail", "3.0.0", "test")]
    assert [e.id for e in rows] == ["c0", "c2", "c3", "c4"]  # c1 has an empty summary
    assert rows[0] == Example("c0", "Summarize the following news article.", "news 0", "hl 0", "cnn")
    with pytest.raises(DataError, match=r"row 2: column 'highlights' is empty"):
        D.load_examples("abisee/cnn_dailymail", skip_invalid=False)
    with pytest.raises(DataError, match="nobody/nothing: cannot load hub dataset"):
        D.load_examples("nobody/nothing")
    assert D.load_examples("someone/samsum") == [Example("s0", "Summarize the following dialogue.", "A: hi",
                                                         "A greets.", "samsum")]


def test_local_files_whole_in_order_with_task_guess(tmp_path):
    path = _write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS)
    rows = D.load_examples(path, split="test")
    assert [e.id for e in rows] == [str(i) for i in range(10)]
    assert rows[0] == Example("0", "Task 0.", "input 0", "answer 0", "alpaca")
    assert D.load_examples(path, split="train") == rows  # local files are used whole
    assert D.load_examples(path, limit=4) == rows[:4]
    array = tmp_path / "a.json"
    array.write_text(json.dumps(ALPACA_ROWS, indent=1))
    assert D.load_examples(array) == rows
    cases = {"samsum": {"id": "s1", "dialogue": "A: hi", "summary": "A greets."},
             "cnn": {"article": "News.", "highlights": "Short."},
             "dolly": {"instruction": "Q?", "context": "", "response": "A.", "category": "qa"}}
    for task, row in cases.items():
        (ex,) = D.load_examples(_write_jsonl(tmp_path / f"{task}.jsonl", [row]))
        assert ex.task == task
    assert D.load_examples(tmp_path / "samsum.jsonl")[0].id == "s1"
    assert D.load_examples(tmp_path / "cnn.jsonl", task="alpaca", columns={
        "instruction": "article", "response": "highlights"})[0].task == "alpaca"  # task overridable


def test_local_validation_fraction(tmp_path):
    path = _write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS)
    train = D.load_examples(path, "train", validation_fraction=0.2)
    val = D.load_examples(path, "validation", validation_fraction=0.2)
    assert (len(train), len(val)) == (8, 2) and not {e.id for e in train} & {e.id for e in val}


def test_column_overrides(tmp_path):
    path = _write_jsonl(tmp_path / "qa.jsonl", [{"key": 7, "question": "Why?", "answer": "Because."}])
    (ex,) = D.load_examples(path, columns={"id": "key", "instruction": "question", "response": "answer"})
    assert ex == Example("7", "Why?", "", "Because.", "alpaca")
    with pytest.raises(DataError, match="unknown key"):
        D.load_examples(path, columns={"question": "instruction"})


def test_prompt_only_rows_may_lack_a_response(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"instruction": "Say hi.", "output": ""},
                                               {"instruction": "Go."}])
    rows = D.load_examples(path, require_response=False)
    assert [e.response for e in rows] == ["", ""]
    with pytest.raises(DataError, match=r"p.jsonl: line 1: column 'output' is empty"):
        D.load_examples(path)


def test_builtin_set():
    if not builtin_path().is_file():
        pytest.skip("builtin.jsonl not written yet")
    rows = D.load_examples("builtin")
    assert rows and all(e.task == "alpaca" and e.instruction and e.response for e in rows)
    assert len({e.id for e in rows}) == len(rows)


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("content,kwargs,pattern", [
    (None, {}, r"missing\.jsonl: no such file"),
    ("", {}, r"bad\.jsonl: no rows"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": \n', {}, r"bad\.jsonl: line 2: invalid JSON"),
    ('[{"instruction": "a", "output": "b"},\n oops]', {}, r"bad\.jsonl: line 2: invalid JSON"),
    ('[1, 2]', {}, r"bad\.jsonl: row 1: expected a JSON object, got int"),
    ('{"prompt": "a", "completion": "b"}\n', {},
     r"bad\.jsonl: cannot tell the task from columns \['completion', 'prompt'\]"),
    ('{"instruction": "a", "input": "", "answer": "b"}\n', {"task": "alpaca"},
     r"bad\.jsonl: missing required column\(s\) 'output' \(response\) for task 'alpaca'; "
     r"columns present: instruction, input, answer"),
    ('{"instruction": "a", "output": "b"}\n\n{"instruction": " ", "output": "b"}\n', {},
     r"bad\.jsonl: line 3: column 'instruction' is empty"),
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": 3}\n', {},
     r"bad\.jsonl: line 2: column 'output' must be a string, got int"),
    ('{"instruction": "a", "output": "b"}\n{"output": "b"}\n', {},
     r"bad\.jsonl: line 2: column 'instruction' is missing"),
    ('{"instruction": "a", "input": 5, "output": "b"}\n', {},
     r"bad\.jsonl: line 1: column 'input' must be a string"),
    ('{"instruction": "a", "output": "b"}\n', {"limit": 0}, r"bad\.jsonl: no rows left"),
])
def test_data_errors_name_file_row_and_column(tmp_path, monkeypatch, content, kwargs, pattern):
    monkeypatch.chdir(tmp_path)
    name = "missing.jsonl" if content is None else "bad.jsonl"
    if content is not None:
        Path(name).write_text(content)
    with pytest.raises(DataError, match=pattern) as err:
        D.load_examples(name, **kwargs)
    assert "\n" not in str(err.value) and isinstance(err.value, ValueError)


def test_unreadable_file(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(DataError, match=r"dir\.jsonl: cannot read"):
        D.load_examples(tmp_path / "dir.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"instruction": "caf\xe9", "output": "b"}\n')
    with pytest.raises(DataError, match=r"latin1\.jsonl: cannot read"):
        D.load_examples(tmp_path / "latin1.jsonl")


# --- cache ------------------------------------------------------------------------------------

def test_prepare_dataset_caches_by_content_key(tmp_path, tok, monkeypatch):
    path = _write_jsonl(tmp_path / "a.jsonl", ALPACA_ROWS)
    cache = tmp_path / "cache"
    kwargs = dict(prompt_format="alpaca", max_seq_length=256, cache_dir=cache)
    first = D.prepare_dataset(path, tok, **kwargs)
    assert first.column_names == ["input_ids", "attention_mask", "labels"] and len(first) == 10
    assert first[0] == D.tokenize_example(D.load_examples(path)[0], tok, "alpaca", 256)
    (entry,) = cache.iterdir()  # one entry, no temporary directory left
    assert json.loads((entry / "meta.json").read_text())["rows"] == 10

    def must_not_tokenize(*args, **kw):
        raise AssertionError("cache miss")
    monkeypatch.setattr(D, "tokenize_example", must_not_tokenize)
    assert D.prepare_dataset(path, tok, **kwargs).to_list() == first.to_list()  # a hit
    monkeypatch.undo()

    D.prepare_dataset(path, tok, limit=4, **kwargs)
    D.prepare_dataset(path, tok, **{**kwargs, "max_seq_length": 257})
    _write_jsonl(path, ALPACA_ROWS[:5])
    os.utime(path, ns=(1, 1))  # another file at the same path: new key
    assert len(D.prepare_dataset(path, tok, **kwargs)) == 5
    assert len(list(cache.iterdir())) == 4


def test_a_hub_dataset_cache_follows_its_revision(tmp_path, tok, monkeypatch):
    """A hub dataset is cached under the fingerprint the datasets library gives its rows (which follows
    the hub revision): a new revision of the same id is tokenized anew, the same one is a cache hit."""
    revision = {"rows": [{"id": "c0", "article": "old news", "highlights": "old"}], "fingerprint": "rev-1"}

    def load_dataset(name, config=None, split=None):
        ds = datasets.Dataset.from_list(revision["rows"])
        ds._fingerprint = revision["fingerprint"]
        return ds

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    kwargs = dict(split="test", prompt_format="alpaca", max_seq_length=256, cache_dir=tmp_path / "cache")
    first = D.prepare_dataset("abisee/cnn_dailymail", tok, **kwargs)
    revision.update(rows=[{"id": "c0", "article": "new news, longer", "highlights": "new"}], fingerprint="rev-2")
    second = D.prepare_dataset("abisee/cnn_dailymail", tok, **kwargs)
    assert second.to_list() != first.to_list()
    assert second.to_list() == D.prepare_dataset("abisee/cnn_dailymail", tok, **kwargs).to_list()
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("ADALAS_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("ADALAS_CACHE")
    assert cache_dir() == tmp_path / "x" / "adalas"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "adalas"


# --- collator ---------------------------------------------------------------------------------

def test_collator_pads_on_one_side_with_ignored_labels(tok):
    rows = [D.tokenize_example(Example("0", "Name a color.", "", r, "alpaca"), tok, "alpaca", 128)
            for r in ("red", "the quick brown fox jumps")]
    n = max(len(r["input_ids"]) for r in rows)
    batch = D.make_collator(tok)(rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, n)
    short = len(rows[0]["input_ids"])
    assert batch["input_ids"][0, short:].tolist() == [tok.pad_token_id] * (n - short)
    assert batch["labels"][0, short:].tolist() == [-100] * (n - short)
    assert batch["attention_mask"][0].sum() == short
    left = D.make_collator(tok, padding_side="left", pad_to_multiple_of=8)(
        [{k: r[k] for k in ("input_ids", "attention_mask")} for r in rows])
    assert set(left) == {"input_ids", "attention_mask"} and left["input_ids"].shape[1] % 8 == 0
    assert left["attention_mask"][0, -short:].tolist() == [1] * short and left["attention_mask"][0, 0] == 0
