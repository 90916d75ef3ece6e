"""Gemma, Gemma 2, Gemma 3 (text and multimodal) and Phi-3 match `transformers`.

Tiny random checkpoints of each, with `head_dim` 12 (not hidden / heads), a
sliding window of 8 tokens and rotary scaling whose original length is 16,
run a right-padded batch of 24 tokens: past the window and past the
pretraining length. The Gemma ones add what the family is made of: norms
stored as offsets from one (random, so `1 + w` shows), a
`query_pre_attn_scalar` that is not `head_dim`, soft-capped attention and
logits (Gemma 2), query/key norms and a rotary base and scaling per layer
type (Gemma 3). The Phi-3 ones turn 3/4 of each head (Phi-4-mini's
`partial_rotary_factor`) with `longrope`, and hold fused `qkv_proj` and
`gate_up_proj` weights. Two variants are written with the older spellings
on disk (Gemma 3's `rope_local_base_freq` / `sliding_window_pattern` / flat
`rope_scaling`, Phi-3's `rope_scaling` with `type` and a top-level
`partial_rotary_factor`, as Phi-3-mini-128k's folder has them), read by `transformers` and nlpkit alike. Checked:
hidden states and logits, cached decoding, greedy and 3-beam search on
left-padded prompts, the export read back by the family's `*ForCausalLM`,
and `nlpkit.load` of a folder generating.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from nlpkit.backbones import from_pretrained
from nlpkit.backbones.checkpoints import load_checkpoint, save_pretrained
from nlpkit.errors import NlpkitError
from tests.parity._tiny import (
    FAMILIES,
    TOLERANCE,
    assert_generation_matches,
    assert_load_generates_like_transformers,
    build,
    export_and_reload,
    incremental_logits,
    max_diff,
    right_padded_batch,
    transformers,
)

LENGTH, WINDOW, ORIGINAL, PAD = 24, 8, 16, 0
# Phi-3's partial_rotary_factor 0.75 of head_dim 8 turns 6 dimensions: 3 frequencies.
_LONGROPE = {"rope_type": "longrope", "rope_theta": 50000.0, "short_factor": [1.0, 1.2, 1.5],
             "long_factor": [1.0, 3.0, 7.0]}
_PHI3 = dict(FAMILIES["phi3"].config, max_position_embeddings=64, original_max_position_embeddings=ORIGINAL,
             sliding_window=WINDOW, rope_parameters=dict(_LONGROPE, partial_rotary_factor=0.75))
_GEMMA3 = dict(FAMILIES["gemma3_text"].config, max_position_embeddings=64,
               rope_parameters={"full_attention": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 80000.0,
                                                   "original_max_position_embeddings": ORIGINAL},
                                "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0}})
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "gemma": ("gemma", dict(FAMILIES["gemma"].config)),
    "gemma2": ("gemma2", dict(FAMILIES["gemma2"].config)),
    "gemma3": ("gemma3_text", _GEMMA3),
    "phi3": ("phi3", _PHI3),
    # Phi-3 without a window, with a plain rope: the fused weights alone.
    "phi3-plain": ("phi3", dict(FAMILIES["phi3"].config)),
}
# Length-dependent rope (longrope): transformers' own cached decoding is the reference, not its full pass.
_LENGTH_DEPENDENT = {"phi3"}


def _reference(name: str) -> Any:
    family, config = VARIANTS[name]
    return build(dataclasses.replace(FAMILIES[family], name=name, config=config))


@pytest.fixture(scope="module", params=list(VARIANTS))
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Any, Any]:
    name = request.param
    folder = tmp_path_factory.mktemp(name) / "ckpt"
    reference = _reference(name)
    reference.save_pretrained(folder)
    return name, folder, reference, from_pretrained(folder).eval()


def _right_padded() -> tuple[torch.Tensor, torch.Tensor]:
    return right_padded_batch(LENGTH, PAD)


def _assert_matches(ours: Any, reference: Any) -> None:
    ids, mask = _right_padded()
    with torch.no_grad():
        theirs = reference(ids, attention_mask=mask, output_hidden_states=True)
        hidden = ours(ids, attention_mask=mask).last_hidden_state
    assert max_diff(hidden, theirs.hidden_states[-1], mask) < TOLERANCE
    assert max_diff(ours.logits(hidden), theirs.logits, mask) < TOLERANCE


def test_config_reads_the_family_fields(models: tuple[str, Path, Any, Any]) -> None:
    name, _, reference, ours = models
    config = ours.config
    gemma = name.startswith("gemma")
    assert config.norm_unit_offset == config.scale_embedding == gemma
    assert config.branch_output_norm == (name in ("gemma2", "gemma3"))
    hf = reference.config
    assert config.resolved_head_dim == (getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads)
    if gemma and name != "gemma":
        assert config.attention_scale == pytest.approx(reference.config.query_pre_attn_scalar**-0.5)
        assert [config.layer_window(i) is not None for i in range(config.num_layers)] == [
            t == "sliding_attention" for t in reference.config.layer_types]
    assert (config.attention_softcap, config.logit_softcap) == ((2.0, 3.0) if name == "gemma2" else (None, None))
    assert config.qk_norm == (name == "gemma3")
    if name == "gemma3":
        assert (config.rope_theta, config.local_rope_theta) == (80000.0, 5000.0)
        assert config.rope_scaling is not None and config.rope_scaling.type == "yarn"
        assert config.local_rope_scaling is None
    if name == "phi3":
        assert (config.partial_rotary_factor, config.rotary_dim, config.sliding_window) == (0.75, 6, WINDOW)
        assert config.rope_scaling is not None and config.rope_scaling.original_max_positions == ORIGINAL


def test_full_pass_matches_transformers(models: tuple[str, Path, Any, Any]) -> None:
    _, _, reference, ours = models
    _assert_matches(ours, reference)


def test_cached_decoding(models: tuple[str, Path, Any, Any]) -> None:
    name, _, reference, ours = models
    ids = _right_padded()[0][:1]  # the full row: past the window and the original length
    with torch.no_grad():
        cached = incremental_logits(ours, ids, 5)
        if name in _LENGTH_DEPENDENT:
            assert max_diff(cached, incremental_logits(reference, ids, 5)) < TOLERANCE
        else:
            assert max_diff(cached, ours.logits(ours(ids).last_hidden_state)) < 1e-5


@pytest.mark.parametrize("options", [dict(), dict(num_beams=3)], ids=["greedy", "3-beams"])
def test_generation_matches_transformers(models: tuple[str, Path, Any, Any], options: dict[str, Any]) -> None:
    _, _, reference, ours = models
    assert_generation_matches(ours, reference, PAD, **options)


def test_export_loads_in_transformers(models: tuple[str, Path, Any, Any], tmp_path: Path) -> None:
    _, folder, reference, ours = models
    out = tmp_path / "out"
    reloaded, diff = export_and_reload(ours, folder, out, _right_padded())
    assert type(reloaded).__name__ == type(reference).__name__
    assert diff < TOLERANCE
    assert from_pretrained(out).config == ours.config


def test_phi3_fused_weights_are_split_and_fused_back(tmp_path: Path) -> None:
    reference = _reference("phi3")
    reference.save_pretrained(tmp_path / "ckpt")
    ours = from_pretrained(tmp_path / "ckpt")
    attention, mlp = reference.model.layers[0].self_attn, reference.model.layers[0].mlp
    rows = ours.config.num_heads * ours.config.resolved_head_dim
    assert torch.equal(ours.layers[0].attention.query.weight, attention.qkv_proj.weight[:rows])
    assert torch.equal(ours.layers[0].mlp.gate.weight, mlp.gate_up_proj.weight[: ours.config.intermediate_size])
    out = save_pretrained(ours, tmp_path / "out", family="phi3")
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    assert torch.equal(saved["layers.0.self_attn.qkv_proj.weight"], attention.qkv_proj.weight)
    assert torch.equal(saved["layers.0.mlp.gate_up_proj.weight"], mlp.gate_up_proj.weight)
    assert not [key for key in saved if key.endswith(("q_proj.weight", "gate_proj.weight", ".up_proj.weight"))]


def _rewrite(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def test_older_gemma3_spellings_load_as_transformers_reads_them(tmp_path: Path) -> None:
    _reference("gemma3").save_pretrained(tmp_path)
    _rewrite(tmp_path, rope_parameters=None, layer_types=None, sliding_window_pattern=3, rope_theta=80000.0,
             rope_local_base_freq=5000.0, rope_scaling={"rope_type": "linear", "factor": 2.0})
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert reference.config.rope_parameters["full_attention"]["rope_type"] == "linear"
    ours = from_pretrained(tmp_path).eval()
    assert ours.config.layer_types == ["sliding_attention", "sliding_attention", "full_attention"]
    assert (ours.config.rope_theta, ours.config.local_rope_theta, ours.config.local_rope_scaling) == (80000.0, 5000.0,
                                                                                                      None)
    _assert_matches(ours, reference)


def test_older_phi3_spellings_load_as_transformers_reads_them(tmp_path: Path) -> None:
    _reference("phi3").save_pretrained(tmp_path)
    _rewrite(tmp_path, rope_parameters=None, rope_theta=50000.0, partial_rotary_factor=0.75,
             rope_scaling={"type": "longrope", "short_factor": _LONGROPE["short_factor"],
                           "long_factor": _LONGROPE["long_factor"]})
    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert reference.config.rope_parameters["rope_type"] == "longrope"
    ours = from_pretrained(tmp_path).eval()
    assert ours.config.rope_scaling is not None and ours.config.rope_scaling.type == "longrope"
    _assert_matches(ours, reference)


def _multimodal_gemma3(folder: Path) -> Any:
    """A tiny Gemma3ForConditionalGeneration (a one-layer SigLIP tower) saved to `folder`."""
    config = transformers.Gemma3Config(
        text_config=_GEMMA3, mm_tokens_per_image=4, image_token_index=90, boi_token_index=91, eoi_token_index=92,
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=28, patch_size=14), attn_implementation="eager")
    model = transformers.Gemma3ForConditionalGeneration(config)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    model.eval().save_pretrained(folder)
    return model


def test_multimodal_gemma3_loads_its_language_model(tmp_path: Path) -> None:
    reference = _multimodal_gemma3(tmp_path / "mm")
    loaded = load_checkpoint(tmp_path / "mm")
    assert loaded.family == "gemma3_text"
    assert not loaded.extra_state  # the vision tower and projector are left out
    ours = from_pretrained(tmp_path / "mm").eval()
    _assert_matches(ours, reference)
    out = save_pretrained(ours, tmp_path / "out", family=loaded.family)
    text_model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    assert type(text_model).__name__ == "Gemma3ForCausalLM"
    _assert_matches(ours, text_model)


def test_inexpressible_gemma_options_name_the_field(tmp_path: Path) -> None:
    _reference("gemma2").save_pretrained(tmp_path)
    _rewrite(tmp_path, use_bidirectional_attention=True)
    with pytest.raises(NlpkitError, match="use_bidirectional_attention"):
        load_checkpoint(tmp_path)
    ours = from_pretrained(_write(tmp_path / "plain", "gemma"))
    with pytest.raises(NlpkitError, match="norm_unit_offset"):
        save_pretrained(ours, tmp_path / "out", family="llama")


def _write(folder: Path, name: str) -> Path:
    _reference(name).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", ["gemma2", "gemma3", "phi3"])
def test_nlpkit_load_generates_like_transformers(name: str, tmp_path: Path) -> None:
    reference = _reference(name)
    reference.save_pretrained(tmp_path / name)
    assert_load_generates_like_transformers(tmp_path / name, reference)
