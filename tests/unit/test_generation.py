"""Decoding options: names and defaults as transformers', errors that name the option."""

from __future__ import annotations

import pytest

from nlpkit import NlpkitError
from nlpkit.generation import generate_ids, resolve_options
from nlpkit.testing import tiny_backbone


def test_options_merge_over_checkpoint_defaults_and_unset_ones_keep_transformers_defaults():
    defaults = {"num_beams": 4, "max_length": 50, "eos_token_id": 2, "transformers_version": "4.0", "top_k": None}
    options = resolve_options({"num_beams": 2, "stop": "\n\n"}, defaults)
    assert (options.num_beams, options.max_length, options.eos_ids, options.stop) == (2, 50, [2], ["\n\n"])
    assert (options.top_k, options.temperature, options.length_penalty, options.early_stopping) == (50, 1.0, 1.0, False)
    # The caller's max_length beats the checkpoint's max_new_tokens, as in transformers.
    assert resolve_options({"max_length": 30}, {"max_new_tokens": 5}).max_new_tokens is None


@pytest.mark.parametrize("options, message", [
    ({"max_new_token": 5}, "unknown decoding option 'max_new_token'; did you mean 'max_new_tokens'?"),
    ({"temperature": 0}, "decoding option temperature: expected a number > 0"),
    ({"top_p": 1.5}, "decoding option top_p"),
    ({"num_beams": "4"}, "decoding option num_beams: expected an integer"),
    ({"early_stopping": "sometimes"}, "decoding option early_stopping"),
    ({"num_return_sequences": 2}, "greedy decoding has one answer per prompt"),
    ({"num_beams": 2, "num_return_sequences": 3}, "more than num_beams"),
])
def test_bad_options_name_the_option(options, message):
    with pytest.raises(NlpkitError, match=message.replace("?", r"\?")):
        resolve_options(options)


def test_a_prompt_longer_than_the_context_window_is_refused():
    model = tiny_backbone("decoder", vocab_size=64, max_positions=16)
    with pytest.raises(NlpkitError, match="prompt 2 has 20 tokens, more than the model's context window of 16"):
        generate_ids(model, [[5, 6], [7] * 20], resolve_options({"max_new_tokens": 4}))
    # A prompt that fits but leaves too little room generates up to the window.
    found = generate_ids(model, [[5] * 14], resolve_options({"max_new_tokens": 8}))
    assert len(found[0][0]) == 2


@pytest.mark.parametrize("ending", ["eos", "length"])
def test_streaming_shows_an_unfinished_character_at_the_end_as_the_answer_does(ending):
    import torch

    from nlpkit.generation import _Streamer
    from nlpkit.testing import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    eos = tokenizer.token_id("eos")
    # "Ã" is byte 0xC3 in the byte-level alphabet: the first half of "é", which never gets its second byte.
    ids = [tokenizer.backend.token_to_id(t) for t in ("t", "Ã", "o", "Ã")] + ([eos] if ending == "eos" else [])
    shown: list[str] = []
    printer = _Streamer(tokenizer, [eos], [], lambda row, text: shown.append(text), rows=1)
    for token in ids:
        printer(torch.tensor([token]), torch.tensor([True]))
    printer.finish()
    answer = tokenizer.decode([t for t in ids if t != eos])
    assert "".join(shown) == answer == "t\ufffdo\ufffd"
