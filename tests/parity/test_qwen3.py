"""Qwen3 matches `transformers`' `Qwen3ForCausalLM`.

Three tiny random checkpoints, each with `head_dim` 12 where
`hidden_size / num_attention_heads` is 8 and two key/value heads for four
query heads: a plain one, one with YaRN rotary scaling and biases on every
attention projection (`attention_bias` covers `o_proj` in Qwen3), and one
whose layers from `max_window_layers` on slide over a window of 8. Checked:
hidden states and logits on a right-padded batch (and that the per-head
query/key norms matter), cached decoding against the full pass, greedy and
3-beam search on left-padded prompts, the export read back by
`transformers` as `Qwen3ForCausalLM`, and `nlpkit.load` of the folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from nlpkit.backbones import from_pretrained
from nlpkit.backbones.checkpoints import save_pretrained
from nlpkit.errors import NlpkitError
from tests.parity._tiny import (
    FAMILIES,
    TOLERANCE,
    assert_generation_matches,
    assert_load_generates_like_transformers,
    build,
    export_and_reload,
    max_diff,
    right_padded_batch,
)

LENGTH, WINDOW, PAD = 24, 8, 3
_BASE = FAMILIES["qwen3"].config
_VARIANTS = {
    "plain": dict(_BASE),
    "yarn-bias": dict(_BASE, attention_bias=True, max_position_embeddings=64,
                      rope_parameters={"rope_type": "yarn", "rope_theta": 50000.0, "factor": 4.0,
                                       "original_max_position_embeddings": 16}),
    "sliding": dict(_BASE, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1, num_hidden_layers=3),
}


@pytest.fixture(scope="module", params=list(_VARIANTS))
def models(request, tmp_path_factory):
    name = request.param
    folder = tmp_path_factory.mktemp(name) / "ckpt"
    reference = build(dataclasses.replace(FAMILIES["qwen3"], name=f"qwen3-{name}", config=_VARIANTS[name]))
    reference.save_pretrained(folder)
    return name, folder, reference, from_pretrained(folder).eval()


def _right_padded() -> tuple[torch.Tensor, torch.Tensor]:
    return right_padded_batch(LENGTH, PAD)


def test_config_reads_qwen3_fields(models):
    name, _, _, ours = models
    config = ours.config
    assert (config.qk_norm, config.resolved_head_dim, config.resolved_num_kv_heads) == (True, 12, 2)
    assert config.attention_bias == config.attention_output_bias == (name == "yarn-bias")
    assert (config.rope_scaling is not None) == (name == "yarn-bias")
    if name == "sliding":
        assert config.sliding_window == WINDOW
        assert config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    else:
        assert config.sliding_window is None


def test_full_pass_matches_transformers(models):
    _, _, reference, ours = models
    ids, mask = _right_padded()
    with torch.no_grad():
        theirs = reference(ids, attention_mask=mask, output_hidden_states=True)
        hidden = ours(ids, attention_mask=mask).last_hidden_state
        # Without the query/key norms the output differs: the test can tell the feature is on.
        attention = ours.layers[0].attention
        saved = attention.query_norm, attention.key_norm
        attention.query_norm = attention.key_norm = None
        try:
            plain = ours(ids, attention_mask=mask).last_hidden_state
        finally:
            attention.query_norm, attention.key_norm = saved
    assert max_diff(hidden, theirs.hidden_states[-1], mask) < TOLERANCE
    assert max_diff(ours.logits(hidden), theirs.logits, mask) < TOLERANCE
    assert max_diff(plain, hidden, mask) > 1e-2


def test_cached_decoding_equals_full_pass(models):
    _, _, _, ours = models
    ids = _right_padded()[0][:1]  # the full row
    with torch.no_grad():
        full = ours(ids).last_hidden_state
        out = ours(ids[:, :5], use_cache=True)
        steps, cache = [out.last_hidden_state], out.past_key_values
        for t in range(5, LENGTH):
            out = ours(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.last_hidden_state)
    assert max_diff(torch.cat(steps, dim=1), full) < 1e-5


@pytest.mark.parametrize("options", [dict(), dict(num_beams=3)], ids=["greedy", "3-beams"])
def test_generation_matches_transformers(models, options):
    _, _, reference, ours = models
    assert_generation_matches(ours, reference, PAD, **options)


def test_export_loads_in_transformers(models, tmp_path: Path):
    _, folder, _, ours = models
    out = tmp_path / "out"
    reloaded, diff = export_and_reload(ours, folder, out, _right_padded())
    assert type(reloaded).__name__ == "Qwen3ForCausalLM"
    assert reloaded.config.head_dim == 12
    assert reloaded.config.attention_bias == ours.config.attention_bias
    assert reloaded.config.layer_types == [
        "sliding_attention" if ours.config.layer_window(i) is not None else "full_attention"
        for i in range(ours.config.num_layers)]
    assert diff < TOLERANCE
    assert from_pretrained(out).config == ours.config


def test_a_family_without_qk_norm_cannot_hold_it(tmp_path: Path):
    build(FAMILIES["qwen3"]).save_pretrained(tmp_path / "ckpt")
    ours = from_pretrained(tmp_path / "ckpt")
    with pytest.raises(NlpkitError, match="qk_norm"):
        save_pretrained(ours, tmp_path / "out", family="llama")


def test_nlpkit_load_generates_like_transformers(tmp_path: Path):
    reference = build(FAMILIES["qwen3"])
    reference.save_pretrained(tmp_path / "qwen3")
    assert assert_load_generates_like_transformers(tmp_path / "qwen3", reference).backbone.config.qk_norm
