"""Generation options behave as in transformers: the wrapped model's own `generate` on the same tiny
model, same options, gives the same tokens (greedy exactly; sampling with the same torch seed, since
both draw with torch.multinomial from the global generator)."""
from __future__ import annotations

import string

import pytest
import torch
from conftest import VOCAB, batch, tiny_llama, tiny_opt
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from adalas import AdalasForCausalLM


def tiny_tokenizer():
    """A character-level fast tokenizer over the tiny models' vocabulary (0 <unk>, 1 <s>, 2 </s>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = (" " + string.ascii_letters + string.digits + string.punctuation)[:VOCAB - 3]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")


class BanEvenTokens(LogitsProcessor):
    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, ::2] = -float("inf")
        return scores


class StopAfterToken(StoppingCriteria):
    def __init__(self, token: int):
        self.token = token

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.token


def _both(hf, options: dict, seed: int | None = None, n: int = 8):
    ids, mask = batch(B=3, T=6)
    m = AdalasForCausalLM.from_hf(hf)
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=n, pad_token_id=0, eos_token_id=2)
    if seed is not None:
        torch.manual_seed(seed)
    ours = m.generate(**common, **options)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        theirs = hf.generate(**common, **options)
    return ours, theirs


HF_PARITY = {
    "repetition_penalty": dict(do_sample=False, repetition_penalty=1.8),
    "logits_processor": dict(do_sample=False, logits_processor=LogitsProcessorList([BanEvenTokens()])),
    "min_new_tokens": dict(do_sample=False, min_new_tokens=5, repetition_penalty=1.3),
    "sample_temperature_top_k_top_p": dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9),
    "sample_defaults": dict(do_sample=True),  # transformers' top_k=50 default applies in both
    "sample_penalty_processor": dict(do_sample=True, repetition_penalty=1.5, top_k=10,
                                     logits_processor=LogitsProcessorList([BanEvenTokens()])),
}


@pytest.mark.parametrize("name", sorted(HF_PARITY))
def test_same_tokens_as_transformers(name):
    ours, theirs = _both(tiny_llama(), HF_PARITY[name], seed=11)
    assert torch.equal(ours, theirs)


def test_same_tokens_as_transformers_opt_penalty_and_processor():
    options = dict(do_sample=False, repetition_penalty=1.8, logits_processor=LogitsProcessorList([BanEvenTokens()]))
    ours, theirs = _both(tiny_opt(), options)
    assert torch.equal(ours, theirs)
    assert (ours[:, 6:] % 2 == 1).all()


def test_stopping_criterion_as_transformers():
    hf = tiny_llama()
    ids, mask = batch(B=3, T=6)
    free = AdalasForCausalLM.from_hf(hf).generate(input_ids=ids, attention_mask=mask, max_new_tokens=8)
    stop_token = int(free[1, 8])  # row 1 stops after its third new token
    crit = StoppingCriteriaList([StopAfterToken(stop_token)])
    ours, theirs = _both(hf, dict(do_sample=False, stopping_criteria=crit))
    assert torch.equal(ours, theirs)
    assert (ours[1, 9:] == 0).all()


def _fresh_stop_string(tok, out, T0):
    """(row, position, string): the two tokens ending at `position`, a string no earlier step completes."""
    for row in range(out.shape[0]):
        for pos in range(T0 + 1, out.shape[1] - 1):  # a later token exists to be cut
            if (out[row, pos - 1:pos + 1] < 3).any():
                continue
            stop = tok.decode(out[row, pos - 1:pos + 1])
            if not any(tok.decode(out[row, :q + 1]).endswith(stop) for q in range(T0, pos)):
                return row, pos, stop
    raise AssertionError("no usable stop string")


def test_stop_strings():
    hf, tok = tiny_llama(), tiny_tokenizer()
    ids, mask = batch(B=3, T=6)
    m = AdalasForCausalLM.from_hf(hf)
    free = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, eos_token_id=2)
    row, pos, stop = _fresh_stop_string(tok, free, ids.shape[1])
    common = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, eos_token_id=2, pad_token_id=0)
    ours = m.generate(**common, stop_strings=[stop], tokenizer=tok)
    with torch.no_grad():
        theirs = hf.generate(**common, stop_strings=[stop], tokenizer=tok)
    assert torch.equal(ours, theirs)
    assert torch.equal(ours[row, :pos + 1], free[row, :pos + 1]) and (ours[row, pos + 1:] == 0).all()
    with pytest.raises(ValueError, match="stop_strings: needs tokenizer"):
        m.generate(input_ids=ids, max_new_tokens=2, stop_strings=["ab"])


def test_sampling_top_k_1_and_tiny_top_p_equal_greedy():
    ids, mask = batch(B=3, T=6)
    m = AdalasForCausalLM.from_hf(tiny_llama())
    greedy = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=True, top_k=1,
                                  seed=3), greedy)
    assert torch.equal(m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=True,
                                  top_p=1e-6, temperature=2.0, seed=3), greedy)


def test_generation_config_defaults_apply():
    """An option left unset takes the model's generation_config value, as in transformers."""
    hf = tiny_llama()
    hf.generation_config.repetition_penalty = 1.8
    ours, theirs = _both(hf, dict(do_sample=False))
    assert torch.equal(ours, theirs)
    hf.generation_config.repetition_penalty = None
    plain, _ = _both(hf, dict(do_sample=False))
    assert not torch.equal(ours, plain)


@pytest.mark.parametrize("option", [dict(num_beams=2), dict(num_return_sequences=2), dict(penalty_alpha=0.6),
                                    dict(num_beam_groups=2), dict(guidance_scale=1.5), dict(no_such_option=1)])
def test_unsupported_options_raise(option):
    ids, mask = batch()
    m = AdalasForCausalLM.from_hf(tiny_llama())
    with pytest.raises(ValueError, match=next(iter(option))):
        m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, **option)


def test_invalid_values_raise():
    ids, _ = batch()
    m = AdalasForCausalLM.from_hf(tiny_llama())
    with pytest.raises(ValueError, match="temperature"):
        m.generate(input_ids=ids, max_new_tokens=2, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(input_ids=ids, max_new_tokens=0)
