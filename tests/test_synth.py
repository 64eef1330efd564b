"""`adalas synth` on a tiny model with a chat template: deterministic bytes, a killed run resuming to
the same bytes, the filters (built-in rows above all) counted in the meta file, and bad input refused."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from adalas import synth as S
from adalas.cli import main as cli_main

TEMPLATE = "{% for m in messages %}<s> {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}<s> {% endif %}"


@pytest.fixture(scope="module")
def chat_model(tiny_files, tmp_path_factory) -> Path:
    model_dir, _ = tiny_files
    d = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(model_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = TEMPLATE
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


def synth(model: Path, out: Path, *extra: str) -> dict:
    code = cli_main(["synth", "--model", str(model), "--out", str(out), "--n", "5", "--batch-size", "4",
                     "--max-prompt-tokens", "12", "--max-new-tokens", "6", "--min-prompt-words", "2",
                     "--no-progress", *extra])
    assert code == 0
    return json.loads(S.meta_path(out).read_text())


def test_same_seed_same_bytes_and_a_killed_run_resumes_to_them(chat_model, tmp_path, monkeypatch):
    a = synth(chat_model, tmp_path / "a.jsonl")
    synth(chat_model, tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 5 == a["rows"] and a["done"]
    assert all(set(r) == {"id", "instruction", "input", "output"} and r["input"] == "" for r in rows)
    assert a["sampled"] == 5 + sum(a[k] for k in S.DROP_COUNTERS) + (a["sampled"] - 5 - sum(
        a[k] for k in S.DROP_COUNTERS))  # every sampled prompt is kept, dropped, or cut by --n
    assert len({r["instruction"] for r in rows}) == 5
    other = synth(chat_model, tmp_path / "c.jsonl", "--seed", "1")
    assert other["done"] and (tmp_path / "c.jsonl").read_bytes() != (tmp_path / "a.jsonl").read_bytes()

    # a run killed after its first round (and after writing a row its meta file never counted)
    real, calls = S.answer, []

    def dies_second_time(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            with open(tmp_path / "k.jsonl", "a") as f:
                f.write('{"id": "half-written"}\n')
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(S, "answer", dies_second_time)
    assert cli_main(["synth", "--model", str(chat_model), "--out", str(tmp_path / "k.jsonl"), "--n", "5",
                     "--batch-size", "4", "--max-prompt-tokens", "12", "--max-new-tokens", "6",
                     "--min-prompt-words", "2", "--no-progress"]) == 130
    assert not json.loads(S.meta_path(tmp_path / "k.jsonl").read_text())["done"]
    monkeypatch.setattr(S, "answer", real)
    synth(chat_model, tmp_path / "k.jsonl")
    assert (tmp_path / "k.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes()


def test_an_unanswered_prompt_still_counts_as_seen_after_a_resume(chat_model, tmp_path, monkeypatch):
    """A prompt whose answer came back empty is dropped, but a later duplicate of it is a duplicate
    whether or not the run was killed in between."""
    prompts = ["Name a color please", "List three fruits for me", "name a color, please!", "What is two plus two today"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    real = S.answer

    def first_unanswered(model, tok, batch, n):
        return ["" if p == prompts[0] else a for p, a in zip(batch, real(model, tok, batch, n))]

    monkeypatch.setattr(S, "answer", first_unanswered)
    base = ["--prompts", str(tmp_path / "p.txt"), "--n", "10", "--batch-size", "2"]
    whole = synth(chat_model, tmp_path / "whole.jsonl", *base)
    calls = []

    def dies_second_time(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return first_unanswered(*args, **kw)

    monkeypatch.setattr(S, "answer", dies_second_time)
    assert cli_main(["synth", "--model", str(chat_model), "--out", str(tmp_path / "k.jsonl"), "--max-prompt-tokens",
                     "12", "--max-new-tokens", "6", "--min-prompt-words", "2", "--no-progress", *base]) == 130
    monkeypatch.setattr(S, "answer", first_unanswered)
    resumed = synth(chat_model, tmp_path / "k.jsonl", *base)
    assert (whole["dropped_unanswered"], whole["dropped_duplicate"]) == (1, 1) == (
        resumed["dropped_unanswered"], resumed["dropped_duplicate"])
    assert (tmp_path / "k.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_builtin_rows_and_duplicates_are_dropped_and_counted(chat_model, tmp_path):
    from adalas.data import load_examples

    builtin = load_examples("builtin")
    fresh = ["Name a color please", "List three fruits for me", "What is two plus two today"]
    prompts = [
        {"instruction": builtin[0].instruction, "input": builtin[0].context},  # verbatim
        {"instruction": "Please " + " ".join(S.words(builtin[3].response)[:9])},  # an 8-gram of an answer
        {"instruction": fresh[0]}, {"instruction": fresh[0].upper() + "!"},  # the same, after normalisation
        {"instruction": "Hi"},  # short
        {"instruction": fresh[1]}, {"instruction": fresh[2]},
    ]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    meta = synth(chat_model, tmp_path / "out.jsonl", "--prompts", str(tmp_path / "prompts.jsonl"), "--n", "10")
    kept = [json.loads(line)["instruction"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert kept == fresh
    assert (meta["dropped_builtin"], meta["dropped_duplicate"], meta["dropped_short"]) == (2, 1, 1)
    assert meta["sampled"] == len(prompts)


def test_rows_sharing_an_8_gram_with_an_excluded_test_set_are_dropped_and_counted(chat_model, tmp_path):
    dialogue = "Amanda: I baked cookies. Do you want some? Jerry: Sure! Amanda: I'll bring you tomorrow :-)"
    test = tmp_path / "samsum.test.jsonl"  # a test set's own columns, read as the loader reads it
    test.write_text(json.dumps({"id": "t1", "dialogue": dialogue, "summary": "Amanda baked cookies and will "
                                "bring Jerry some tomorrow."}) + "\n")
    fresh = ["Name a color please", "List three fruits for me"]
    prompts = [{"instruction": "Summarize: " + dialogue},  # the dialogue itself
               {"instruction": "Why amanda baked cookies and will bring jerry some tomorrow"},  # the reference
               {"instruction": fresh[0]}, {"instruction": fresh[1]}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    meta = synth(chat_model, tmp_path / "out.jsonl", "--prompts", str(tmp_path / "prompts.jsonl"), "--n", "10",
                 "--exclude", str(test))
    kept = [json.loads(line)["instruction"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert kept == fresh and meta["dropped_test"] == 2
    assert meta["settings"]["exclude_sha256"] == [hashlib.sha256(test.read_bytes()).hexdigest()]


def test_near_duplicates_share_an_8_gram():
    seen = S.NearDuplicates()
    seen.add("Write a short poem about the sea at night in winter")
    assert seen.seen("please write a short poem about the sea at night, thanks")
    assert seen.seen("WRITE a short poem about the sea at night in winter!")
    assert not seen.seen("Write a short poem about the mountains")


@pytest.mark.parametrize("extra, pattern", [
    (["--n", "0"], "--n: must be >= 1"),
    (["--prompts", "/nonexistent/p.txt"], "--prompts: '/nonexistent/p.txt' is not a file"),
])
def test_bad_input_is_one_line(chat_model, tmp_path, capsys, extra, pattern):
    assert cli_main(["synth", "--model", str(chat_model), "--out", str(tmp_path / "x.jsonl"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and pattern in err[0]
    assert not (tmp_path / "x.jsonl").exists()


def test_other_settings_in_the_same_file_are_refused(chat_model, tmp_path, capsys):
    synth(chat_model, tmp_path / "a.jsonl")
    assert cli_main(["synth", "--model", str(chat_model), "--out", str(tmp_path / "a.jsonl"), "--n", "5",
                     "--seed", "3", "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err
