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


def _dies_on_second_call(monkeypatch, name: str, out: Path):
    """S.<name> raises KeyboardInterrupt on its second call, after appending a row to `out` that the
    meta file never counted (a kill mid-round); returns the real function, to put back."""
    real, calls = getattr(S, name), []

    def dies_second_time(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            with open(out, "a") as f:
                f.write('{"id": "half-written"}\n')
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(S, name, dies_second_time)
    return real


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
    real = _dies_on_second_call(monkeypatch, "answer", tmp_path / "k.jsonl")
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


# ---------------------------------------------------------------------------------------------
# --shape dialogue|article|input: texts the model writes, with the shape of real tasks' prompts

SHAPE_ARGS = ["--batch-size", "4", "--max-source-tokens", "100", "--max-new-tokens", "40",
              "--min-source-words", "1", "--max-source-words", "200", "--no-progress"]


def shape_synth(model: Path, out: Path, shape: str, *extra: str, n: int = 5) -> dict:
    assert cli_main(["synth", "--model", str(model), "--out", str(out), "--shape", shape, "--n", str(n),
                     *SHAPE_ARGS, *extra]) == 0
    return json.loads(S.meta_path(out).read_text())


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def chats(model, tokenizer, settings, requests, round_index):
    """A stand-in for the model's sampled chats: 'Name: message' lines, one text per (round, row)."""
    import re

    texts = []
    for j, req in enumerate(requests):
        a, b = re.search(r"between (\w+) and (\w+)", req.prompt).groups()
        texts.append((f"{a}: hello {b}, round {round_index} row {j}\n{b}: hi {a}, round {round_index} row {j} fine",
                      True))
    return texts


def summaries(model, tokenizer, rows, max_new_tokens):
    """A stand-in for the model's answers (the tiny model rarely ends one)."""
    return [(f"{instruction} {text[:12]}", True) for instruction, text in rows]


def test_shape_input_same_seed_same_bytes_and_a_killed_run_resumes_to_them(chat_model, tmp_path, monkeypatch):
    """The model's own texts and answers (a run killed after its first round, then resumed, writes the
    bytes of an unbroken run: its first round is the same for the same seed, and so are the rest)."""
    a = shape_synth(chat_model, tmp_path / "a.jsonl", "input")
    rows = read_rows(tmp_path / "a.jsonl")
    operations = S.shape_definition("input")["instructions"]
    assert len(rows) == 5 == a["rows"] and a["done"]
    assert all(list(r) == ["id", "instruction", "input", "output", "finished"] and r["input"] and r["output"]
               and r["instruction"] in operations and r["id"].startswith("synth-input-0-") for r in rows)
    assert a["settings"]["shape"] == "input" and a["settings"]["max_source_tokens"] == 100
    assert a["settings"]["shape_sha256"] == S.shape_digest("input")
    assert set(S.SHAPE_COUNTERS) | {"texts_cut"} <= set(a)
    assert a["settings"]["max_new_tokens"] == 40 and a["settings"]["repetition_penalty"] == 1.15

    real = _dies_on_second_call(monkeypatch, "answer_inputs", tmp_path / "k.jsonl")
    assert cli_main(["synth", "--model", str(chat_model), "--out", str(tmp_path / "k.jsonl"), "--shape", "input",
                     "--n", "5", *SHAPE_ARGS]) == 130
    assert not json.loads(S.meta_path(tmp_path / "k.jsonl").read_text())["done"]
    monkeypatch.setattr(S, "answer_inputs", real)
    shape_synth(chat_model, tmp_path / "k.jsonl", "input")
    assert (tmp_path / "k.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes()


def test_shape_article_rows_have_the_cnn_prompt(chat_model, tmp_path):
    from adalas.data import TASKS, build_prompt, load_examples
    from transformers import AutoTokenizer

    meta = shape_synth(chat_model, tmp_path / "a.jsonl", "article", n=3)
    rows = read_rows(tmp_path / "a.jsonl")
    assert len(rows) == 3 == meta["rows"]
    assert all(r["instruction"] == TASKS["cnn"].instruction and r["input"] for r in rows)
    # each row, read as training data, prompts exactly as a CNN/DailyMail test row with the same article
    (tmp_path / "cnn.jsonl").write_text("".join(json.dumps({"id": r["id"], "article": r["input"], "highlights": "x"})
                                                + "\n" for r in rows))
    tok = AutoTokenizer.from_pretrained(chat_model)
    ours, theirs = load_examples(str(tmp_path / "a.jsonl")), load_examples(str(tmp_path / "cnn.jsonl"))
    assert [e.task for e in ours] == ["alpaca"] * 3 and [e.task for e in theirs] == ["cnn"] * 3
    assert [build_prompt(e, "chat", tok) for e in ours] == [build_prompt(e, "chat", tok) for e in theirs]


@pytest.mark.parametrize("task, column", [("samsum", "dialogue"), ("cnn", "article")])
def test_a_summary_row_in_alpaca_columns_prompts_as_the_test_sets_row(chat_model, tmp_path, task, column):
    """In the chat format the user turn is instruction + blank line + input, which is what the SAMSum
    and CNN/DailyMail loaders build with their fixed instruction: training rows have the test prompts' shape."""
    from adalas.data import TASKS, build_prompt, load_examples, tokenize_prompt
    from transformers import AutoTokenizer

    text = "Anna: Are we still on for Saturday?\nBen: Yes, 10am at the station.\nAnna: Great, see you there"
    (tmp_path / "test.jsonl").write_text(json.dumps({"id": "t", column: text, "summary" if task == "samsum"
                                                     else "highlights": "They meet on Saturday."}) + "\n")
    (tmp_path / "ours.jsonl").write_text(json.dumps({"id": "o", "instruction": TASKS[task].instruction,
                                                     "input": text, "output": "They meet."}) + "\n")
    tok = AutoTokenizer.from_pretrained(chat_model)
    [theirs], [ours] = load_examples(str(tmp_path / "test.jsonl")), load_examples(str(tmp_path / "ours.jsonl"))
    assert (theirs.task, ours.task) == (task, "alpaca")
    assert build_prompt(theirs, "chat", tok) == build_prompt(ours, "chat", tok)
    assert build_prompt(ours, "chat", tok) == tok.apply_chat_template(
        [{"role": "user", "content": TASKS[task].instruction + "\n\n" + text}], tokenize=False,
        add_generation_prompt=True)
    assert tokenize_prompt(theirs, tok) == tokenize_prompt(ours, tok)


def test_shape_dialogue_rows_and_every_filter_counted(chat_model, tmp_path, monkeypatch):
    from adalas.data import TASKS, build_prompt, load_examples
    from transformers import AutoTokenizer

    monkeypatch.setattr(S, "write_sources", chats)
    monkeypatch.setattr(S, "answer_inputs", summaries)
    meta = shape_synth(chat_model, tmp_path / "a.jsonl", "dialogue")
    rows = read_rows(tmp_path / "a.jsonl")
    assert len(rows) == 5 and all(r["instruction"] == "Summarize the following dialogue." == TASKS["samsum"].instruction
                                  and S.well_formed("dialogue", r["input"]) for r in rows)
    shape_synth(chat_model, tmp_path / "b.jsonl", "dialogue")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    tok = AutoTokenizer.from_pretrained(chat_model)
    (tmp_path / "s.jsonl").write_text(json.dumps({"id": "s", "dialogue": rows[0]["input"], "summary": "x"}) + "\n")
    assert build_prompt(load_examples(str(tmp_path / "s.jsonl"))[0], "chat", tok) == \
        build_prompt(load_examples(str(tmp_path / "a.jsonl"))[0], "chat", tok)
    assert meta["dropped_malformed"] == 0

    # the filters, on texts we choose; the excluded test set has the same instruction as every row,
    # which is not a leak (it is the task's template), but its dialogue and its summary are
    dialogue = "Amanda: I baked cookies. Do you want some?\nJerry: Sure!\nAmanda: I'll bring you tomorrow :-)"
    summary = "Amanda baked cookies and will bring Jerry some tomorrow."
    test = tmp_path / "samsum.test.jsonl"
    test.write_text(json.dumps({"id": "t1", "dialogue": dialogue, "summary": summary}) + "\n")
    from adalas.data import load_examples as le
    builtin = le("builtin")[0]
    texts = iter([
        ("Ben: " + dialogue.replace("\n", " ") + "\nAnna: ok", True),      # an 8-gram of the test dialogue
        ("Ben: well " + builtin.context + "\nAnna: ok", True),              # an 8-gram of a built-in row
        ("Ben: and then we could", False),                                # cut by the cap: no whole message
        ("Ben: this is a story, not a chat\nand it goes on without names", True),  # one message: malformed
        ("Ben: shall we go to the lake on sunday morning\nAnna: yes", True),  # kept
        ("BEN: shall we go to the lake on sunday morning!\nAnna: no", True),  # duplicate (shared 8-gram)
        ("Ben: the printer is jammed again\nAnna: I will call someone", True),  # kept, then its answer leaks
        ("Ben: what a snowstorm\nAnna: stay home today\nBen: stay ho", False),  # cut: two whole messages kept;
                                                                          # its answer runs past the cap, kept
        ("Ben: we go on and on and on and on and on and on and on and on\nAnna: yes", True),  # loops
        ("Ben: the bake sale is on friday\nAnna: I will bring a cake", True),  # kept
    ] + [(f"Ben: extra text number {i}\nAnna: fine {i}", True) for i in range(20)])
    monkeypatch.setattr(S, "write_sources", lambda m, t, s, requests, r: [next(texts) for _ in requests])
    def answers(model, tok, pairs, n):
        return [("Summary: " + summary, True) if "printer" in x else ("Ben and Anna stay", False)
                if "snowstorm" in x else a for (_, x), a in zip(pairs, summaries(model, tok, pairs, n))]

    monkeypatch.setattr(S, "answer_inputs", answers)
    meta = shape_synth(chat_model, tmp_path / "f.jsonl", "dialogue", "--exclude", str(test), n=3)
    rows = read_rows(tmp_path / "f.jsonl")
    assert [(r["input"], r["finished"]) for r in rows] == [
        ("Ben: shall we go to the lake on sunday morning\nAnna: yes", True),
        ("Ben: what a snowstorm\nAnna: stay home today", False),
        ("Ben: the bake sale is on friday\nAnna: I will bring a cake", True)]
    assert rows[1]["output"] == "Ben and Anna stay"
    assert (meta["dropped_test"], meta["dropped_builtin"], meta["dropped_unfinished"], meta["dropped_malformed"],
            meta["dropped_duplicate"], meta["dropped_repetitive"], meta["texts_cut"]) == (2, 1, 1, 1, 1, 1, 2)
    assert meta["unanswered_prompts"] == ["Ben: the printer is jammed again\nAnna: I will call someone"]


def test_shape_requests_are_drawn_from_the_seed():
    settings = S.SynthSettings(shape="dialogue", seed=4, batch_size=16)
    a, b = S.shape_requests(settings, 3), S.shape_requests(settings, 3)
    assert a == b and a != S.shape_requests(settings, 4) and a != S.shape_requests(
        S.SynthSettings(shape="dialogue", seed=5, batch_size=16), 3)
    spec = S.shape_definition("dialogue")
    assert len(spec["names"]) >= 20 and len(spec["topics"]) >= 40
    assert len({r.prompt for r in a}) > 8
    for r in a:
        import re
        n1, n2, topic = re.fullmatch(r"Write a short chat conversation between (\w+) and (\w+) about (.+)\. "
                                     r"One message per line, written as 'Name: message'\.", r.prompt).groups()
        assert n1 != n2 and {n1, n2} <= set(spec["names"]) and topic in spec["topics"]
    inputs = S.shape_requests(S.SynthSettings(shape="input", batch_size=64), 0)
    assert len({r.instruction for r in inputs}) > 6
    builtin = S.builtin_filter()  # no operation of ours is (or shares an 8-gram with) a built-in instruction
    assert not any(builtin.seen(op) for op in S.shape_definition("input")["instructions"])


def test_well_formed_dialogues():
    assert S.well_formed("dialogue", "Anna: hi\nBen: hello there\n\nAnna: bye")
    assert not S.well_formed("dialogue", "Anna: hi\nAnna: anyone?")             # one speaker
    assert not S.well_formed("dialogue", "Anna: hi\nBen: hello\nThe end.")      # a line that is not a message
    assert not S.well_formed("dialogue", "Anna: hi")
    assert S.well_formed("article", "Anything goes.")


def test_shape_settings_are_checked_and_recorded(chat_model, tmp_path, capsys):
    from adalas.commands import synth as command

    assert (command.SHAPES, command.MAX_SOURCE_TOKENS, command.SOURCE_WORDS, command.SHAPE_TEMPERATURE,
            command.SHAPE_REPETITION_PENALTY, command.SHAPE_ANSWER_TOKENS) == (
        S.SHAPES, S.MAX_SOURCE_TOKENS, S.SOURCE_WORDS, S.SHAPE_TEMPERATURE, S.SHAPE_REPETITION_PENALTY,
        S.SHAPE_ANSWER_TOKENS)
    for extra, pattern in [(["--max-source-tokens", "9"], "--max-source-tokens: only with --shape"),
                           (["--shape", "dialogue", "--prompts", str(tmp_path / "p.txt")], "--prompts: only with"),
                           (["--repetition-penalty", "1.2"], "--repetition-penalty: only with --shape"),
                           (["--shape", "input", "--min-source-words", "9", "--max-source-words", "3"],
                            "min_source_words (9) > max_source_words (3)")]:
        assert cli_main(["synth", "--model", str(chat_model), "--out", str(tmp_path / "x.jsonl"), *extra]) == 2
        assert pattern in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
    with pytest.raises(ValueError, match="shape: choose from plain, dialogue, article, input"):
        S.SynthSettings(shape="novel")
    with pytest.raises(ValueError, match="max_source_tokens: only for a shape other than plain"):
        S.SynthSettings(max_source_tokens=9)
    # defaults per shape; plain keeps None, so a meta file made before shapes existed still resumes
    assert (S.SynthSettings(shape="dialogue").min_source_words, S.SynthSettings(shape="article").max_source_words,
            S.SynthSettings(shape="input").max_source_tokens) == (30, 400, 320)
    assert (S.SynthSettings().temperature, S.SynthSettings(shape="article").temperature,
            S.SynthSettings(shape="input", temperature=0.9).temperature) == (1.0, 0.7, 0.9)
    # the answer cap of a shape is its real task's (the protocol's); plain keeps 128
    assert [S.SynthSettings(shape=k).max_new_tokens for k in S.SHAPES] == [128, 48, 64, 64]
    assert (S.SynthSettings().repetition_penalty, S.SynthSettings(shape="dialogue").repetition_penalty) == (1.0, 1.15)
    with pytest.raises(ValueError, match="repetition_penalty: only for a shape"):
        S.SynthSettings(repetition_penalty=1.2)
    plain = synth(chat_model, tmp_path / "p.jsonl")
    assert plain["settings"]["shape"] == "plain" and plain["settings"]["max_source_tokens"] is None
    assert plain["settings"]["temperature"] == 1.0
    for k in ("shape", "max_source_tokens", "min_source_words", "max_source_words", "shape_sha256"):
        del plain["settings"][k]
    S.meta_path(tmp_path / "p.jsonl").write_text(json.dumps(plain | {"done": False}))
    before = (tmp_path / "p.jsonl").read_bytes()
    assert synth(chat_model, tmp_path / "p.jsonl")["done"]
    assert (tmp_path / "p.jsonl").read_bytes() == before
    # another shape on the same file is refused
    assert cli_main(["synth", "--model", str(chat_model), "--out", str(tmp_path / "p.jsonl"), "--n", "5",
                     "--shape", "input", *SHAPE_ARGS]) == 2
    assert "other settings" in capsys.readouterr().err


def test_write_sources_samples_with_the_rounds_seed_and_a_repetition_penalty(monkeypatch):
    seen = {}

    def complete(model, tokenizer, examples, max_new_tokens, **options):
        seen.update(options, prompts=[e.instruction for e in examples], cap=max_new_tokens)
        return [("Anna: hi there  \n\nBen:  hello", True), ("Anna: and then", False)]

    monkeypatch.setattr(S, "_complete", complete)
    settings = S.SynthSettings(shape="dialogue", seed=3, batch_size=2, max_source_tokens=50)
    requests = S.shape_requests(settings, 7)
    assert S.write_sources(None, None, settings, requests, 7) == [("Anna: hi there  \n\nBen:  hello", True),
                                                                  ("Anna: and then", False)]
    assert seen == {"do_sample": True, "temperature": 0.7, "top_p": 0.95, "top_k": 0, "seed": S.round_seed(3, 7),
                    "repetition_penalty": 1.15, "prompts": [r.prompt for r in requests], "cap": 50}
    seen.clear()
    S.write_sources(None, None, S.SynthSettings(shape="input", repetition_penalty=1.0), requests, 0)
    assert "repetition_penalty" not in seen


def test_a_text_cut_by_its_cap_keeps_its_whole_messages_or_sentences():
    from adalas.synth_shapes import source_text

    chat = "Anna: hi there  \n\n(Ben waves)\nBen:  hello\nAnna: see you at"
    assert source_text("dialogue", chat, finished=True) == "Anna: hi there\nBen: hello\nAnna: see you at"
    assert source_text("dialogue", chat, finished=False) == "Anna: hi there\nBen: hello"  # the last line is cut
    article = 'The fair opened on Monday. "It was busy!" said Tara. Crowds are expected to'
    assert source_text("article", article, finished=True) == article
    assert source_text("article", article, finished=False) == 'The fair opened on Monday. "It was busy!" said Tara.'
    assert source_text("input", "no sentence ends here", finished=False) == ""
    assert source_text("input", "  Version 2.0 is out.  ", finished=True) == "Version 2.0 is out."
    assert S.loops("a b c d e f g h x a b c d e f g h") and not S.loops("a b c d e f g h x a b c d e f g y")
