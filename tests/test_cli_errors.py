"""`adalas` on bad input (issue 6): exit code 2, one line on stderr that starts `adalas <cmd>: error:`
and names the bad value and what is allowed, no traceback, and nothing written.

Each row of the matrix runs the real command line, `adalas.cli.main(argv)` in this process (fast), on
tiny models saved to directories, and compares everything under the test's tmp_path (names and bytes)
before and after: no output directory, no partial file, no settings file, no rewritten input. A few
rows run again as `python -m adalas` in a subprocess, end to end. Also here: `--long-prompts`
(refuse by default, truncate with a warning) and Ctrl-C on a running sweep (exit 130, only whole rows
on disk, a rerun ends with the bytes of an uninterrupted run).

Progress bars are switched off (transformers' `disable_progress_bar()`; HF_HUB_DISABLE_PROGRESS_BARS=1 in
subprocesses), as in CI: they are not error output.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from adalas.cli import main

from conftest import ROWS, make_tiny

DEPTH_OK = '{"mode": "static_skip", "skip_layers": [1]}'


# ---------------------------------------------------------------------------------------------
# The world: tiny models, data files, a finished sweep and eval (read-only; rows copy what they change)

def _fake_checkpoint(directory: Path, config, tokenizer_from: Path) -> Path:
    """A config of another architecture, a placeholder safetensors file and a tokenizer: enough to be
    refused from its config, before any weight is read."""
    from safetensors.torch import save_file
    import torch

    config.save_pretrained(directory)
    save_file({"placeholder": torch.zeros(1)}, str(directory / "model.safetensors"))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_from / f, directory / f)
    return directory


DATA_FILES = {
    "bad.jsonl": '{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n',
    "bad.json": '[{"instruction": "a", "output": "b"},\n {"instruction": }]\n',
    "list_row.jsonl": '{"instruction": "a", "output": "b"}\n[1, 2]\n',
    "nocolumns.jsonl": '{"question": "a", "answer": "b"}\n',
    "row_missing.jsonl": '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n',
    "wrong_type.jsonl": '{"instruction": "a", "output": 3}\n',
    "empty.jsonl": "",
    "blank.jsonl": "\n  \n\n",
    "dup.jsonl": '{"id": "x", "instruction": "a", "output": "b"}\n{"id": "x", "instruction": "c", "output": "d"}\n',
}


@pytest.fixture(scope="module")
def world(tiny_files, tmp_path_factory):
    from transformers import BertConfig, T5Config

    model, data = tiny_files
    root = tmp_path_factory.mktemp("world")
    w = {"model": str(model), "data": str(data), "cache": str(root / "cache")}
    short = shutil.copytree(model, root / "short")  # the same model with a context of 40 positions
    cfg = json.loads((short / "config.json").read_text())
    (short / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 40}))
    w["short"] = str(short)
    w["deep"] = str(make_tiny(root / "deep", layers=8)[0])
    w["bert"] = str(_fake_checkpoint(root / "bert", BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                               num_attention_heads=4, intermediate_size=64), model))
    w["t5"] = str(_fake_checkpoint(root / "t5", T5Config(vocab_size=64, d_model=32, d_ff=64, d_kv=8, num_layers=2,
                                                         num_heads=4), model))
    (root / "noconfig").mkdir()
    w["noconfig"] = str(root / "noconfig")
    files = root / "data"
    files.mkdir()
    for name, text in DATA_FILES.items():
        (files / name).write_text(text)
    (files / "binary.jsonl").write_bytes(b"\xff\xfe\x00 not utf-8")
    (files / "locked.jsonl").write_text(DATA_FILES["wrong_type.jsonl"])
    (files / "locked.jsonl").chmod(0)
    (files / "long.jsonl").write_text(json.dumps({"id": "long", "instruction": " ".join(["Name a color."] * 80),
                                                  "output": "Red."}) + "\n")
    w.update({name.replace(".", "_"): str(files / name) for name in [*DATA_FILES, "binary.jsonl", "locked.jsonl",
                                                                       "long.jsonl"]})
    w["missing"] = str(files / "missing.jsonl")
    w["datadir"] = str(files)
    env = {"ADALAS_CACHE": w["cache"], "HF_HUB_OFFLINE": "1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert main(["sweep", *_flags({**w, "out": str(root / "sweep")}, "sweep")]) == 0
        assert main(["eval", *_flags({**w, "out": str(root / "evaluated")}, "eval")]) == 0
    w["sweep_src"], w["evaluated_src"] = str(root / "sweep"), str(root / "evaluated")
    return w


# what a run needs besides the value a row gets wrong; later flags override earlier ones
BASE = {
    "demo": ["--model", "@model", "--max-new-tokens", "2"],
    "eval": ["--model", "@model", "--data", "@data", "--limit", "2", "--max-new-tokens", "2", "--batch-size", "2",
             "--no-progress", "--out", "@out"],
    "sweep": ["--model", "@model", "--data", "@data", "--limit", "4", "--max-new-tokens", "2", "--batch-size", "2",
              "--budgets", "3", "--routes-per-budget", "1", "--no-progress", "--out", "@out"],
    "analyze": ["hidden", "--model", "@model", "--data", "@data", "--limit", "2", "--budgets", "3", "--out", "@out"],
    "train": ["--model", "@model", "--data", "@data", "--max_steps", "1", "--max_seq_length", "128",
              "--report_to", "none", "--output_dir", "@out"],
    "warmup": ["--model", "@model", "--data", "@data", "--max_steps", "1", "--max_seq_length", "128",
               "--report_to", "none", "--depth", '{"mode": "learned"}', "--output_dir", "@out"],
    "train-router": ["--sweep", "@sweep", "--model", "@model", "--folds", "0", "--out", "@out"],
    "oracle": ["--sweep", "@sweep"],
    "export": ["--model", "@model", "--depth", DEPTH_OK, "--out", "@out"],
    "route": ["--model", "@model", "--data", "@data", "--layers", "2", "--rows", "2", "--max-candidates", "2",
              "--no-progress"],
    "reproduce": ["--model", "@model", "--data", "@data", "--limit", "2", "--max-new-tokens", "2", "--budgets", "3",
                  "--analysis-limit", "1", "--no-progress", "--out", "@out"],
    "study": ["--quick", "--out", "@out", "--runs", "@runs", "--no-progress"],
    "synth": ["--model", "@model", "--n", "2", "--batch-size", "2", "--max-new-tokens", "2", "--no-progress",
              "--out", "@out"],
    "bench": ["decode", "--model", "@model", "--new-tokens", "2", "--repeats", "1", "--batch-sizes", "1",
              "--no-redundant"],
    "adapt": ["--model", "@model", "--data", "@data", "--layers", "2", "--steps", "1", "--no-progress", "--out", "@out"],
    "tasks": ["run", "--why", "a test", "--data-dir", "@datadir", "--out", "@out", "--runs", "@runs", "--no-progress"],
}


def _flags(paths: dict, cmd: str, extra: tuple[str, ...] = ()) -> list[str]:
    """BASE[cmd] + extra, with "@name" replaced by paths[name]."""
    return [paths[a[1:]] if a.startswith("@") else a for a in [*BASE[cmd], *extra]]


# ---------------------------------------------------------------------------------------------
# The matrix

@dataclass
class Row:
    cmd: str
    extra: tuple[str, ...]
    expect: str  # a regex the one-line message must match (re.search)
    setup: Callable[[Path, dict], None] | None = field(default=None, repr=False)  # (tmp_path, world): before the snapshot
    id: str = ""


def _rows(cmds: str, extra, expect, setup=None, name="") -> list[Row]:
    return [Row(c, tuple(extra), expect, setup, f"{c}-{name}") for c in cmds.split()]


def _taken(tmp: Path, world: dict) -> None:
    (tmp / "taken").write_text("a file, not a directory\n")


def _outdir(tmp: Path, world: dict) -> None:
    (tmp / "outdir").mkdir()


def _edit_sweep(edit_sweep=None) -> Callable[[Path, dict], None]:
    """Copy the world's sweep into tmp/sweep, then rewrite its sweep.jsonl rows with `edit_sweep`
    (rows in, rows out; a str comes out as that line)."""
    def setup(tmp: Path, world: dict) -> None:
        shutil.copytree(world["sweep_src"], tmp / "sweep")
        if edit_sweep is not None:
            f = tmp / "sweep" / "sweep.jsonl"
            rows = edit_sweep([json.loads(x) for x in f.read_text().splitlines()])
            f.write_text("".join((r if isinstance(r, str) else json.dumps(r, sort_keys=True)) + "\n" for r in rows))
    return setup


def _copy_evaluated(tmp: Path, world: dict) -> None:
    shutil.copytree(world["evaluated_src"], tmp / "evaluated")


def _set(index: int | None, **fields) -> Callable[[list], list]:
    def edit(rows: list) -> list:
        for k, r in enumerate(rows):
            if index is None or k == index:
                r.update(fields)
        return rows
    return edit


OFFLINE = (r"model 'nobody/no-such-model': cannot load: .*\(offline: HF_HUB_OFFLINE is set, and it is not in the "
           r"local Hugging Face cache; download it on a machine with network, e.g\. `hf download "
           r"nobody/no-such-model`, or pass a local directory\)")
UNSUPPORTED = r"unsupported architecture '{}'; supported model types: .*llama"
RANGE = r"{} {} is out of range for a model with 4 layers \({}\)"

MATRIX = [
    # --depth: unknown mode or field, malformed JSON, values out of range for the model
    *_rows("eval export train", ["--depth", '{"mode": "bogus"}'],
           r"mode: unknown mode 'bogus'; allowed: full, static_skip, .*early_exit", name="depth-unknown-mode"),
    *_rows("eval export train", ["--depth", '{"mode": "full", "skip": [1]}'],
           r"depth: unknown field\(s\) skip; allowed: .*skip_layers", name="depth-unknown-field"),
    *_rows("eval export train", ["--depth", '{"mode": "static_skip", '],
           r"depth: malformed JSON \(Expecting .* at line 1 column \d+\)", name="depth-malformed-json"),
    *_rows("eval", ["--depth", "[1, 2]"], r"depth: '\[1, 2\]' is neither inline JSON nor an existing JSON file",
           name="depth-not-an-object"),
    *_rows("eval export", ["--depth", "no/such/depth.json"],
           r"depth: 'no/such/depth.json' is neither inline JSON nor an existing JSON file", name="depth-no-file"),
    *_rows("eval export train", ["--depth", '{"mode": "static_skip", "skip_layers": [9]}'],
           RANGE.format("skip_layers: layer", 9, r"0\.\.3"), name="skip-layer-out-of-range"),
    *_rows("eval", ["--depth", '{"mode": "static_skip", "skip_layers": [-1]}'],
           r"skip_layers: -1 is not a layer index \(integer >= 0\)", name="skip-layer-negative"),
    *_rows("eval train", ["--depth", '{"mode": "stochastic", "skip_probs": [0.5, 0.5]}'],
           r"skip_probs: has 2 entries; the model has 4 layers", name="skip-probs-length"),
    *_rows("eval", ["--depth", '{"mode": "stochastic", "skip_probs": [0.1, 0.1, 0.1, 1.5]}'],
           r"skip_probs\[3\]: 1\.5 is not a probability in \[0, 1\]", name="skip-prob-above-1"),
    *_rows("eval export", ["--depth", '{"mode": "early_exit", "exit_after": 9}'],
           RANGE.format("exit_after:", 9, r"1\.\.4"), name="exit-after-out-of-range"),
    *_rows("eval", ["--depth", '{"mode": "early_exit", "exit_after": 0}'],
           r"exit_after: must be an integer >= 1, got 0", name="exit-after-zero"),
    *_rows("eval", ["--depth", '{"mode": "random_budget", "budget": 9}'],
           RANGE.format("budget:", 9, r"1\.\.4"), name="budget-out-of-range"),
    *_rows("eval export", ["--depth", '{"mode": "route", "route": [true, false]}'],
           r"route: has 2 entries; the model has 4 layers", name="route-length"),
    *_rows("eval", ["--depth", '{"mode": "route", "route": [false, false, false, false]}'],
           r"route: runs no layer; a route must keep at least one", name="route-empty"),
    *_rows("eval warmup", ["--depth", '{"mode": "learned", "controller_layers": [7]}'],
           RANGE.format("controller_layers: layer", 7, r"0\.\.3"), name="controller-layer-out-of-range"),
    *_rows("warmup", ["--depth", '{"mode": "learned", "tau": 0}'], r"tau: must be a positive number, got 0",
           name="tau-zero"),
    *_rows("export", ["--depth", '{"mode": "stochastic", "skip_probs": [0.1, 0.1, 0.1, 0.1]}'],
           r"depth: mode 'stochastic' chooses layers per token or per sequence; export needs a static route "
           r"\(full, static_skip, early_exit, route\)", name="depth-not-static"),
    # other flags out of range for the model
    *_rows("sweep analyze", ["--budgets", "9"], RANGE.format("budgets:", 9, r"1\.\.4"), name="budget-9"),
    *_rows("sweep", ["--budgets", "0"], RANGE.format("budgets:", 0, r"1\.\.4"), name="budget-0"),
    *_rows("sweep", ["--budgets", "3-x"], r"budgets: cannot read '3-x'; use e\.g\. 20,24,27 or 20-30:2",
           name="budget-unreadable"),
    *_rows("sweep", ["--routes", "101"], r"routes: '101' has 3 entries; the model has 4 layers", name="route-length"),
    *_rows("sweep", ["--routes", "1121"], r"routes: route string must be a non-empty string of 0/1, got '1121'",
           name="route-not-binary"),
    *_rows("sweep analyze", ["--strategies", "nope"], r"strategies: unknown 'nope'; choose from early_exit, "
           r"uniform_skip, random_route", name="unknown-strategy"),
    *_rows("train-router", ["--feature-layers", "9"], r"--feature-layers: each must be in 0\.\.3, got '9'",
           _edit_sweep(), name="feature-layer-out-of-range"),
    *_rows("train-router", ["--target-avg-layers", "99"],
           r"--target-avg-layers: must be in \(0, 4\] for a model with 4 layers, got 99\.0", _edit_sweep(),
           name="target-out-of-range"),
    *_rows("train-router", ["--strategies", "bogus"], r"strategies: \['bogus'\] are not fixed-route strategies",
           _edit_sweep(), name="unknown-strategy"),
    *_rows("oracle", ["--strategies", "bogus"],
           r"strategies: 'bogus' not in .*sweep\.jsonl; its strategies: early_exit, full, random_route, uniform_skip",
           _edit_sweep(), name="unknown-strategy"),
    # models: not found offline, not a model, unsupported architectures
    *_rows("demo eval sweep analyze export train warmup bench route", ["--model", "nobody/no-such-model"], OFFLINE,
           name="model-not-cached-offline"),
    *_rows("demo eval sweep analyze export train bench", ["--model", "@bert"], UNSUPPORTED.format("bert"),
           name="unsupported-architecture-bert"),
    *_rows("eval warmup", ["--model", "@t5"], UNSUPPORTED.format("t5"), name="unsupported-architecture-t5"),
    *_rows("eval", ["--model", "@data"], r"model '.*data\.jsonl': is a file; pass a model directory, a hub id or "
           r"one of smollm2-135m", name="model-is-a-file"),
    *_rows("eval", ["--model", "@noconfig"], r"model '.*noconfig': directory has no config\.json",
           name="model-dir-without-config"),
    # data: missing, unreadable, not JSON, wrong rows, missing columns, empty
    *_rows("eval sweep analyze train route", ["--data", "@missing"], r"missing\.jsonl: no such file",
           name="data-missing"),
    # adapt (tests/test_adapt.py has its full matrix): a layer count the model cannot keep, --out a file
    *_rows("adapt", ["--layers", "4"], r"--layers: must be in 1\.\.3 \(the model has 4 layers\), got 4",
           name="layers-all"),
    *_rows("adapt", ["--out", "@taken"], r"--out: .* exists and is a file", setup=_taken, name="out-is-a-file"),
    # tasks: the shared test sets are not where --data-dir says, or a task that is not one of them
    *_rows("tasks", [], r"task 'samsum': .*samsum\.test\.jsonl is not a file; pass --data-dir", name="test-sets-missing"),
    *_rows("tasks", ["--tasks", "alpaca"], r"task: unknown 'alpaca'; the real tasks are samsum, cnn_dailymail, "
           r"user_oriented", name="unknown-task"),
    # route: a layer count the model cannot keep, evaluation data to choose on
    *_rows("route", ["--layers", "9"], r"--layers: must be in 1\.\.3 \(the model has 4 layers\), got 9",
           name="layers-out-of-range"),
    *_rows("route", ["--layers", "0"], r"--layers: must be >= 1, got 0", name="layers-0"),
    *_rows("route", ["--data", "builtin"], r"--data: builtin is the built-in evaluation set; route choices are made "
           r"on held-out rows, never on evaluation data", name="data-builtin"),
    *_rows("eval sweep", ["--data", "@datadir"], r"data: cannot read \(.*Is a directory.*\); --data takes a readable "
           r"UTF-8 JSON or JSONL file, a hub dataset id, or builtin", name="data-is-a-directory"),
    *_rows("eval train", ["--data", "@binary_jsonl"], r"binary\.jsonl: cannot read \('utf-8' codec can't decode.*\); "
           r"--data takes a readable UTF-8 JSON or JSONL file", name="data-not-utf8"),
    *[pytest.param(r, marks=pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file"), id=r.id)
      for r in _rows("eval", ["--data", "@locked_jsonl"], r"locked\.jsonl: cannot read \(.*Permission denied.*\)",
                     name="data-unreadable")],
    *_rows("eval sweep analyze train", ["--data", "@bad_jsonl"], r"bad\.jsonl: line 2: invalid JSON: Expecting value",
           name="jsonl-bad-line"),
    *_rows("eval", ["--data", "@bad_json"], r"bad\.json: line 2: invalid JSON", name="json-array-bad"),
    *_rows("eval", ["--data", "@list_row_jsonl"], r"list_row\.jsonl: line 2: expected a JSON object, got list",
           name="jsonl-row-not-an-object"),
    *_rows("eval sweep analyze train", ["--data", "@nocolumns_jsonl"],
           r"nocolumns\.jsonl: cannot tell the task from columns \['answer', 'question'\].*closest: alpaca, missing "
           r"'instruction', 'output'", name="data-missing-columns"),
    *_rows("eval", ["--data", "@row_missing_jsonl"], r"row_missing\.jsonl: line 2: column 'output' is missing",
           name="data-row-missing-column"),
    *_rows("eval", ["--data", "@wrong_type_jsonl"], r"wrong_type\.jsonl: line 1: column 'output' must be a string, "
           r"got int", name="data-wrong-type"),
    *_rows("eval sweep train", ["--data", "@empty_jsonl"], r"empty\.jsonl: no rows", name="data-empty"),
    *_rows("eval", ["--data", "@blank_jsonl"], r"blank\.jsonl: no rows", name="data-blank-lines"),
    *_rows("eval", ["--data", "@dup_jsonl"], r"dup\.jsonl': duplicate id 'x' \(ids key the result rows\)",
           name="data-duplicate-ids"),
    *_rows("train", ["--validation_fraction", "0.01", "--eval_strategy", "steps", "--eval_steps", "1"],
           r"data\.jsonl: no rows left \(split 'validation': 0 of 7 rows, limit=None, 0 invalid row\(s\) skipped\); a "
           r"data set needs at least one", name="data-empty-after-split"),
    # prompts longer than the model's context (40 positions here): refused unless --long-prompts truncate
    *_rows("eval sweep", ["--model", "@short"], r"data '.*': the prompt with id 'r1' has \d+ tokens; with 2 new "
           r"tokens the model's context of 40 positions leaves room for 38; pass --long-prompts truncate",
           name="prompt-longer-than-context"),
    *_rows("reproduce", ["--model", "@short"], r"data '.*': the prompt with id 'r1' has \d+ tokens; with 2 new "
           r"tokens the model's context of 40 positions leaves room for 38", name="prompt-longer-than-context"),
    *_rows("reproduce", ["--limit", "0"], r"--limit: must be >= 1, got 0", name="limit-zero"),
    *_rows("reproduce", ["--out", "@taken"], r"--out: '.*taken' exists and is a file; pass a directory", _taken,
           name="out-is-a-file"),
    # study: the plan and the directories are checked before anything is built or trained
    *_rows("study", ["--plan", "@missing"], r"--plan: '.*missing\.jsonl': no such file and no packaged plan of that "
           r"name; packaged: quick, smollm2-135m", name="plan-missing"),
    *_rows("study", ["--plan", "@nocolumns_jsonl"], r"plan .*nocolumns\.jsonl: unknown field\(s\) answer, question; "
           r"allowed: description, eval", name="plan-unknown-fields"),
    *_rows("study", ["--out", "@taken"], r"--out: '.*taken' exists and is a file; pass a directory", _taken,
           name="out-is-a-file"),
    *_rows("study", ["--runs", "@taken"], r"--runs: '.*taken' exists and is a file; pass a directory", _taken,
           name="runs-is-a-file"),
    *_rows("study", ["--threads", "0"], r"--threads: must be >= 1, got 0", name="threads-0"),
    *_rows("eval", ["--data", "@long_jsonl"], r"the prompt with id 'long' has \d+ tokens; with 2 new tokens the "
           r"model's context of 256 positions leaves room for 254", name="prompt-longer-than-context-256"),
    *_rows("demo", ["--model", "@short", "--max-new-tokens", "12"], r"demo prompts: the prompt with id '\d' has \d+ "
           r"tokens; with 12 new tokens the model's context of 40 positions leaves room for 28",
           name="prompt-longer-than-context"),
    *_rows("eval", ["--model", "@short", "--max-new-tokens", "40"], r"max_new_tokens: 40 new tokens leave no room "
           r"for a prompt in the model's context of 40 positions", name="new-tokens-fill-the-context"),
    *_rows("eval demo", ["--long-prompts", "cut"], r"argument --long-prompts.*invalid choice: 'cut' \(choose from "
           r"'?refuse'?, '?truncate'?\)", name="long-prompts-unknown"),
    # zero, negative or non-numeric counts
    *_rows("eval sweep demo", ["--max-new-tokens", "0"], r"--max-new-tokens: must be >= 1, got 0",
           name="new-tokens-0"),
    *_rows("eval demo", ["--max-new-tokens", "-3"], r"--max-new-tokens: must be >= 1, got -3", name="new-tokens-neg"),
    *_rows("eval", ["--max-new-tokens", "abc"], r"argument --max-new-tokens.*invalid int value: 'abc'",
           name="new-tokens-not-int"),
    *_rows("eval sweep analyze", ["--batch-size", "0"], r"--batch-size: must be >= 1, got 0", name="batch-size-0"),
    *_rows("eval analyze", ["--limit", "0"], r"--limit: must be >= 1, got 0", name="limit-0"),
    *_rows("eval", ["--max-prompt-tokens", "0"], r"--max-prompt-tokens: must be >= 1, got 0",
           name="max-prompt-tokens-0"),
    *_rows("sweep", ["--routes-per-budget", "-1"], r"routes_per_budget: must be >= 0, got -1",
           name="routes-per-budget-neg"),
    *_rows("analyze", ["--max-seq-length", "1"], r"--max-seq-length: must be >= 2, got 1", name="max-seq-length-1"),
    *_rows("train", ["--max_seq_length", "-3"], r"--max_seq_length: must be >= 2, got -3", name="max-seq-length-neg"),
    *_rows("train warmup", ["--per_device_train_batch_size", "0"], r"--per_device_train_batch_size: must be >= 1, "
           r"got 0", name="batch-size-0"),
    *_rows("train", ["--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps: must be >= 1, got 0",
           name="grad-accumulation-0"),
    *_rows("train", ["--max_steps", "0"], r"--max_steps: must be >= 1, or -1 \(train --num_train_epochs\), got 0",
           name="max-steps-0"),
    *_rows("train", ["--limit", "0"], r"--limit: must be >= 1, got 0", name="limit-0"),
    *_rows("train", ["--max_steps", "abc"], r"argument --max_steps.*invalid int value: 'abc'",
           name="max-steps-not-int"),
    *_rows("train-router", ["--batch-size", "0"], r"--batch-size: must be >= 1, got 0", _edit_sweep(),
           name="batch-size-0"),
    *_rows("train-router", ["--speed-check", "2", "--max-new-tokens", "0"], r"--max-new-tokens: must be >= 1, got 0",
           _edit_sweep(), name="new-tokens-0"),
    *_rows("train-router", ["--speed-check", "-1"], r"--speed-check: must be >= 0, got -1", _edit_sweep(),
           name="speed-check-neg"),
    *_rows("train-router", ["--folds", "1"], r"--folds: must be 0 \(skip\) or >= 2, got 1", _edit_sweep(),
           name="folds-1"),
    *_rows("train-router", ["--test-fraction", "0"], r"--test-fraction: must be in \(0, 1\)", _edit_sweep(),
           name="test-fraction-0"),
    *_rows("bench", ["--new-tokens", "0"], r"--new-tokens: must be >= 1, got 0", name="new-tokens-0"),
    *_rows("bench", ["--repeats", "-1"], r"--repeats: must be >= 1, got -1", name="repeats-neg"),
    *_rows("bench", ["--batch-sizes", "1", "0"], r"--batch-sizes: must be >= 1, got 0", name="batch-size-0"),
    # an output path that exists and is a file (or a directory where a file is wanted)
    *_rows("eval sweep analyze export train-router", ["--out", "@taken"],
           r"--out: '.*taken' exists and is (a file; pass a directory|not a directory; pass --overwrite)",
           _taken, name="out-is-a-file"),
    *_rows("train warmup", ["--output_dir", "@taken"], r"--output_dir: '.*taken' exists and is a file; pass a "
           r"directory", _taken, name="out-is-a-file"),
    *_rows("eval", ["--out", "@taken_sub"], r"--out: '.*taken/sub' is inside '.*taken', which is a file", _taken,
           name="out-inside-a-file"),
    *_rows("train-router", ["--save-model", "@taken"], r"--save-model: '.*taken' exists and is a file", _taken,
           name="save-model-is-a-file"),
    *_rows("synth", ["--n", "0"], r"--n: must be >= 1, got 0", name="zero-rows"),
    *_rows("synth", ["--prompts", "@missing"], r"--prompts: '.*missing\.jsonl' is not a file", name="prompts-missing"),
    *_rows("synth", ["--out", "@outdir"], r"--out: '.*outdir' is a directory; pass a file path, e\.g\. "
           r"'.*outdir/synth\.jsonl'", _outdir, name="out-is-a-directory"),
    *_rows("synth", ["--model", "nobody/no-such-model"], OFFLINE, name="model-not-cached-offline"),
    *_rows("synth", ["--model", "@model"], r"synth: the tokenizer has no chat template to sample a user turn from; "
           r"pass --prompts FILE instead", name="no-chat-template"),
    *_rows("bench", ["--out", "@outdir"], r"--out: '.*outdir' is a directory; pass a file path, e\.g\. '.*outdir/decode\.json'", _outdir,
           name="out-is-a-directory"),
    *_rows("route", ["--out", "@outdir"], r"--out: '.*outdir' is a directory; pass a file path, e\.g\. "
           r"'.*outdir/route\.json'", _outdir, name="out-is-a-directory"),
    *_rows("route", ["--out", "@taken_sub"], r"--out: '.*taken/sub' is inside '.*taken', which is a file", _taken,
           name="out-inside-a-file"),
    *_rows("oracle", ["--out", "@sweep"], r"--out: '.*sweep' is a directory; pass a file path, e\.g\. "
           r"'.*sweep/oracle\.json'", _edit_sweep(), name="out-is-a-directory"),
    # a sweep or result directory from another model
    *_rows("oracle train-router", [], r"rows come from different models: model \".*\" \(sweep\.jsonl:1\) and "
           r"\"other/model\" \(sweep\.jsonl:2\); one sweep directory holds one model's rows",
           _edit_sweep(_set(1, model="other/model")), name="sweep-rows-mix-models"),
    *_rows("oracle", [], r"rows come from different models: num_layers 4 \(sweep\.jsonl:1\) and 8 \(sweep\.jsonl:2\)",
           _edit_sweep(_set(1, num_layers=8)), name="sweep-rows-mix-layer-counts"),
    *_rows("train-router", [], r"--model: the sweep .* was made with model 'other/model', not '.*'; pass --model "
           r"other/model", _edit_sweep(_set(None, model="other/model")), name="sweep-of-another-model"),
    *_rows("train-router", ["--model", "@deep"], r"--model: the sweep .* was made with model '.*', not '.*deep'",
           _edit_sweep(), name="model-with-other-layer-count"),
    *_rows("sweep", ["--out", "@sweep", "--model", "@deep"], r"sweep holds results made with model='.*', not "
           r"'.*deep'; use another --out or delete that directory", _edit_sweep(), name="resume-with-another-model"),
    *_rows("eval", ["--out", "@evaluated", "--model", "@deep"], r"evaluated holds results made with model='.*', not "
           r"'.*deep'; use another --out", _copy_evaluated, name="resume-with-another-model"),
    *_rows("eval", ["--out", "@evaluated", "--max-new-tokens", "3"], r"evaluated holds results made with "
           r"max_new_tokens=2, not 3", _copy_evaluated, name="resume-with-other-settings"),
    *_rows("sweep", ["--checkpoints", "@deep"], r"checkpoints: '.*deep' has 8 layers, the model 4",
           name="checkpoint-with-other-layer-count"),
    *_rows("oracle", ["--sweep", "@missing"], r"sweep directory .*missing\.jsonl does not exist",
           name="sweep-missing"),
    *_rows("oracle", [], r"sweep\.jsonl:2: malformed JSON line", _edit_sweep(lambda rows: [rows[0], "{oops"]),
           name="sweep-malformed-line"),
]


def _paths(tmp: Path, world: dict) -> dict:
    return {**world, "out": str(tmp / "out"), "taken": str(tmp / "taken"), "taken_sub": str(tmp / "taken" / "sub"),
            "runs": str(tmp / "runs"), "outdir": str(tmp / "outdir"), "sweep": str(tmp / "sweep"), "evaluated": str(tmp / "evaluated")}


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under root: "dir", or a digest of the file's bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        try:
            out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        except OSError:
            out[str(p.relative_to(root))] = "unreadable"
    return out


def _check(row: Row, rc, stderr: str) -> None:
    assert rc == 2, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1, stderr
    prefix = f"adalas {row.cmd}: error: "
    assert lines[0].startswith(prefix), lines[0]
    assert re.search(row.expect, lines[0][len(prefix):]), lines[0]


@pytest.fixture(autouse=True)
def _env(world, monkeypatch):
    monkeypatch.setenv("ADALAS_CACHE", world["cache"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", autouse=True)
def _no_progress_bars():
    from transformers.utils import logging as hf_logging

    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    yield
    if bars:
        hf_logging.enable_progress_bar()
    hf_logging.set_verbosity(verbosity)  # `bench` sets it to errors only


def _argv(row: Row, tmp: Path, world: dict) -> list[str]:
    return [row.cmd, *_flags(_paths(tmp, world), row.cmd, row.extra)]


@pytest.mark.parametrize("row", [r if not isinstance(r, Row) else pytest.param(r, id=r.id) for r in MATRIX])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(row, world, tmp_path, capfd):
    if row.setup is not None:
        row.setup(tmp_path, world)
    before = _snapshot(tmp_path)
    capfd.readouterr()
    try:
        rc = main(_argv(row, tmp_path, world))
    except SystemExit as e:  # argparse's own errors (one line too: see cli.DashUnderscoreParser.error)
        rc = e.code
    _check(row, rc, capfd.readouterr().err)
    assert _snapshot(tmp_path) == before


END_TO_END = ["eval-depth-unknown-mode", "sweep-jsonl-bad-line", "eval-model-not-cached-offline"]


@pytest.mark.parametrize("row_id", END_TO_END)
def test_bad_input_end_to_end_in_a_subprocess(row_id, world, tmp_path):
    """The same rows through `python -m adalas`: the process's own exit code and whole stderr."""
    row = next(r for r in MATRIX if isinstance(r, Row) and r.id == row_id)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "ADALAS_CACHE": world["cache"],
           "TOKENIZERS_PARALLELISM": "false"}
    before = _snapshot(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "adalas", *_argv(row, tmp_path, world)], env=env, capture_output=True,
                          text=True, timeout=300)
    _check(row, proc.returncode, proc.stderr)
    assert _snapshot(tmp_path) == before


def test_debug_shows_the_traceback(world, tmp_path):
    with pytest.raises(ValueError, match="unknown mode 'bogus'"):
        main(["--debug", "eval", *_flags(_paths(tmp_path, world), "eval", ("--depth", '{"mode": "bogus"}'))])
    assert not (tmp_path / "out").exists()


def test_the_matrix_covers_every_command():
    from adalas.cli import COMMANDS

    assert {r.cmd for r in MATRIX if isinstance(r, Row)} == set(COMMANDS)


# ---------------------------------------------------------------------------------------------
# --long-prompts truncate: cut to fit, with a warning

def test_long_prompts_truncate_cuts_them_to_fit_with_a_warning(world, tmp_path, caplog):
    out = tmp_path / "out"
    argv = ["eval", "--model", world["short"], "--data", world["data"], "--limit", "3", "--max-new-tokens", "2",
            "--batch-size", "3", "--no-progress", "--long-prompts", "truncate", "--out", str(out)]
    with caplog.at_level("WARNING", logger="adalas.evaluate"):
        assert main(argv) == 0
    warning = [r.getMessage() for r in caplog.records if "long-prompts truncate" in r.getMessage()]
    assert len(warning) == 1 and re.search(r"cut 1 prompt\(s\) to 38 tokens to fit the model's context of 40 "
                                           r"positions with 2 new tokens .*first: id 'r1'", warning[0]), warning
    rows = {r["id"]: r for r in map(json.loads, (out / "per_sequence.jsonl").read_text().splitlines())}
    assert sorted(rows) == ["r0", "r1", "r2"] and all(r["prompt_tokens"] <= 38 for r in rows.values())
    assert rows["r1"]["prompt_tokens"] == 38 and "did not move" not in rows["r1"]["prompt"]  # its input was cut ...
    assert rows["r1"]["prompt"].endswith("Response :")  # ... and the marker kept (as the word-level tokenizer decodes)
    assert json.loads((out / "metrics.json").read_text())["generation"]["long_prompts"] == "truncate"


# ---------------------------------------------------------------------------------------------
# Ctrl-C during a sweep

def _jsonl_lines(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path.name}: a torn last line"
    return [json.loads(line) for line in text.split("\n")[:-1]]


@pytest.mark.slow
def test_ctrl_c_stops_a_sweep_cleanly_and_a_rerun_gives_the_same_bytes(world, tmp_path):
    """SIGINT once the first rows are on disk: exit 130 and the message; only whole lines in
    sweep.jsonl and per_sequence.jsonl; the same command again finishes with the bytes that one
    uninterrupted run writes."""
    def argv(out: Path) -> list[str]:
        # enough work (16 configs x 7 sequences x 12 tokens, some seconds) that the signal lands mid-way
        return ["sweep", "--model", world["model"], "--data", world["data"], "--max-new-tokens", "12",
                "--batch-size", "1", "--budgets", "1-3", "--routes-per-budget", "3", "--no-progress", "--out", str(out)]

    out = tmp_path / "interrupted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "ADALAS_CACHE": world["cache"],
           "TOKENIZERS_PARALLELISM": "false"}
    # A shell starts background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt
    # handler; a suite run that way (`make test &`) would see the sweep finish with exit 0. Ctrl-C
    # reaches a foreground command, so the child gets the default disposition back.
    proc = subprocess.Popen([sys.executable, "-m", "adalas", *argv(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    rows = out / "per_sequence.jsonl"
    deadline = time.monotonic() + 240
    try:
        while not (rows.is_file() and rows.stat().st_size > 0):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no row written in time"
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().split("\n")[-1] == "adalas sweep: interrupted; finished work is saved"
    total = 16 * len(ROWS)  # full + 3 budgets x (early exit, uniform skip, 3 random routes), every sequence
    done = _jsonl_lines(rows)
    assert 0 < len(done) < total, "the sweep was not stopped mid-way"
    if (out / "sweep.jsonl").is_file():
        _jsonl_lines(out / "sweep.jsonl")

    assert main(argv(out)) == 0  # the same command again: resumes
    assert main(argv(tmp_path / "uninterrupted")) == 0
    for name in ("sweep.jsonl", "per_sequence.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "uninterrupted" / name).read_bytes(), name
    assert len(_jsonl_lines(rows)) == total
