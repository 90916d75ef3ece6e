"""Sliding-window attention matches `transformers`' Mistral and Qwen2.

Tiny random checkpoints with a window of 8 are fed sequences of up to 24
tokens, so every layer that slides hides keys a full causal mask would show.
Mistral slides in every layer; the Qwen2 model slides only from
`max_window_layers` on (and, in a second variant, in the layers its
`layer_types` names), as `transformers` 5.24 reads those fields. Checked: the
full pass on a right-padded batch (hidden states and logits), cached decoding
against the full pass, greedy and beam search on left-padded prompts that
cross the window, and the export read back by `transformers`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from nlpkit.backbones import from_pretrained
from tests.parity._tiny import (
    FAMILIES,
    TOLERANCE,
    assert_generation_matches,
    build,
    export_and_reload,
    max_diff,
    right_padded_batch,
    transformers,
)

WINDOW, LENGTH = 8, 24
PAD = 3
_SLIDING = {
    "mistral": dict(FAMILIES["mistral"].config, sliding_window=WINDOW, num_hidden_layers=3),
    # Qwen2Config: layers from max_window_layers on slide, so layer 0 is full, 1 and 2 slide.
    "qwen2-max-window": dict(FAMILIES["qwen2"].config, use_sliding_window=True, sliding_window=WINDOW,
                             max_window_layers=1, num_hidden_layers=3),
    "qwen2-layer-types": dict(FAMILIES["qwen2"].config, use_sliding_window=True, sliding_window=WINDOW,
                              num_hidden_layers=3,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
}
_EXPECTED_TYPES = {"mistral": None, "qwen2-max-window": ["full_attention", "sliding_attention", "sliding_attention"],
                   "qwen2-layer-types": ["sliding_attention", "full_attention", "sliding_attention"]}


def _family(name: str):
    base = FAMILIES[name.split("-")[0]]
    return dataclasses.replace(base, name=name, config=_SLIDING[name])


@pytest.fixture(scope="module", params=list(_SLIDING))
def models(request, tmp_path_factory):
    name = request.param
    folder = tmp_path_factory.mktemp(name) / "ckpt"
    reference = build(_family(name))
    reference.save_pretrained(folder)
    if name == "qwen2-max-window":
        # transformers writes the layer_types it derived; drop them so that max_window_layers is what is read
        # (as in Qwen2 configs written before layer_types existed).
        config_file = folder / "config.json"
        hf = json.loads(config_file.read_text())
        del hf["layer_types"]
        config_file.write_text(json.dumps(hf))
        reference = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
        assert reference.config.layer_types == _EXPECTED_TYPES[name]
    return name, folder, reference, from_pretrained(folder).eval()


def _right_padded() -> tuple[torch.Tensor, torch.Tensor]:
    return right_padded_batch(LENGTH, PAD)


def test_config_reads_window_and_layer_types(models):
    name, _, _, ours = models
    assert ours.config.sliding_window == WINDOW
    assert ours.config.layer_types == _EXPECTED_TYPES[name]


@pytest.mark.parametrize(("model_type", "hf"), [
    ("mistral", {"max_position_embeddings": 32768}),  # Mistral v0.1: sliding_window absent means 4096
    ("mistral", {"sliding_window": None}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "num_hidden_layers": 30}),  # max_window_layers 28
    ("qwen2", {"sliding_window": 16, "max_window_layers": 1, "num_hidden_layers": 3}),  # use_sliding_window false
    ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 0, "num_hidden_layers": 3}),
])
def test_config_json_reads_as_transformers_does(model_type, hf):
    from nlpkit.backbones.checkpoints.llama import config_from_hf

    theirs = transformers.AutoConfig.for_model(model_type, **hf)
    ours = config_from_hf(hf, model_type)
    layers = ours.num_layers
    windows = [ours.layer_window(i) for i in range(layers)]
    if model_type == "mistral":  # MistralAttention gives every layer config.sliding_window
        expected = [theirs.sliding_window] * layers
    else:
        expected = [theirs.sliding_window if t == "sliding_attention" else None for t in theirs.layer_types]
    assert windows == expected


def test_full_pass_matches_transformers(models):
    _, _, reference, ours = models
    ids, mask = _right_padded()
    with torch.no_grad():
        theirs = reference(ids, attention_mask=mask, output_hidden_states=True)
        hidden = ours(ids, attention_mask=mask).last_hidden_state
        full = ours(ids).last_hidden_state  # no padding: the window alone needs a mask
        reference_full = reference(ids, output_hidden_states=True)
        # Without the window the longest row differs: the test can tell the feature is on.
        unwindowed = dataclasses.replace(ours.config, sliding_window=None, layer_types=None)
        ours.config, saved = unwindowed, ours.config
        try:
            plain = ours(ids, attention_mask=mask).last_hidden_state
        finally:
            ours.config = saved
    assert max_diff(hidden, theirs.hidden_states[-1], mask) < TOLERANCE
    assert max_diff(ours.logits(hidden), theirs.logits, mask) < TOLERANCE
    assert max_diff(full, reference_full.hidden_states[-1]) < TOLERANCE
    assert max_diff(plain, hidden, mask) > 1e-2


def test_cached_decoding_equals_full_pass(models):
    _, _, _, ours = models
    ids, mask = _right_padded()
    ids, mask = ids[:1], mask[:1]  # the full row: decoding appends to it
    with torch.no_grad():
        full = ours(ids).last_hidden_state
        out = ours(ids[:, :5], use_cache=True)
        steps = [out.last_hidden_state]
        cache = out.past_key_values
        for t in range(5, LENGTH):
            out = ours(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.last_hidden_state)
    assert max_diff(torch.cat(steps, dim=1), full) < 1e-5


def test_cached_decoding_of_left_padded_batch(models):
    _, _, _, ours = models
    ids, mask = _right_padded()
    # Left-pad each row instead, and decode it one token at a time after a prompt of 10.
    left_ids, left_mask = torch.full_like(ids, PAD), torch.zeros_like(mask)
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        left_ids[row, LENGTH - n:], left_mask[row, LENGTH - n:] = ids[row, :n], 1
    positions = (left_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        full = ours(left_ids, attention_mask=left_mask, position_ids=positions).last_hidden_state
        out = ours(left_ids[:, :10], attention_mask=left_mask[:, :10], position_ids=positions[:, :10],
                   use_cache=True)
        steps, cache = [out.last_hidden_state], out.past_key_values
        for t in range(10, LENGTH):
            out = ours(left_ids[:, t:t + 1], attention_mask=left_mask[:, :t + 1], position_ids=positions[:, t:t + 1],
                       past_key_values=cache, use_cache=True)
            steps.append(out.last_hidden_state)
    assert max_diff(torch.cat(steps, dim=1), full, left_mask) < 1e-5


@pytest.mark.parametrize("options", [dict(), dict(num_beams=3)], ids=["greedy", "3-beams"])
def test_generation_matches_transformers(models, options):
    _, _, reference, ours = models
    assert_generation_matches(ours, reference, PAD, **options)


def test_export_loads_in_transformers(models, tmp_path: Path):
    name, folder, _, ours = models
    out = tmp_path / "out"
    reloaded, diff = export_and_reload(ours, folder, out, _right_padded())
    assert reloaded.config.sliding_window == WINDOW
    if name != "mistral":
        expected = _EXPECTED_TYPES[name]
        assert reloaded.config.layer_types == expected
    assert diff < TOLERANCE
    back = from_pretrained(out).config
    assert (back.sliding_window, back.layer_types) == (ours.config.sliding_window, ours.config.layer_types)
