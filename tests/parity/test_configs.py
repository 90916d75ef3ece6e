"""Folders written by older and newer `transformers` releases load to the same model.

Each test rewrites a 5.x `config.json` (or weight names) into an older
release's form and checks that nlpkit reads the same config and computes
the same outputs as from the original.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from nlpkit.backbones import from_pretrained
from nlpkit.backbones.checkpoints import load_checkpoint
from tests.parity._tiny import FAMILIES, TOLERANCE, build, max_diff, padded_batch, transformers


def _rewrite(folder: Path, drop: tuple[str, ...] = (), **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key in drop:
        config.pop(key, None)
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _decoder_logits(folder: Path) -> torch.Tensor:
    ids, mask = padded_batch(0)
    model = from_pretrained(folder)
    with torch.no_grad():
        return model.logits(model(ids, attention_mask=mask).last_hidden_state) * mask[..., None]


def _seq2seq_logits(folder: Path) -> torch.Tensor:
    ids, mask = padded_batch(0)
    target = torch.randint(3, 90, (3, 6), generator=torch.Generator().manual_seed(2))
    model = from_pretrained(folder)
    with torch.no_grad():
        return model.logits(model(ids, attention_mask=mask, decoder_input_ids=target).last_hidden_state)


def test_llama_rope_theta_at_top_level_as_before_5_0(tmp_path: Path) -> None:
    build(FAMILIES["llama"]).save_pretrained(tmp_path / "new")
    build(FAMILIES["llama"]).save_pretrained(tmp_path / "old")
    _rewrite(tmp_path / "old", drop=("rope_parameters", "dtype"), rope_theta=50000.0, rope_scaling=None,
             torch_dtype="float32")
    assert load_checkpoint(tmp_path / "old").config.rope_theta == load_checkpoint(tmp_path / "new").config.rope_theta
    assert max_diff(_decoder_logits(tmp_path / "old"), _decoder_logits(tmp_path / "new")) == 0.0


def test_absent_tie_word_embeddings_means_the_class_default(tmp_path: Path) -> None:
    for name, tied in (("gpt2", True), ("llama", False)):
        build(FAMILIES[name]).save_pretrained(tmp_path / name)
        _rewrite(tmp_path / name, drop=("tie_word_embeddings",))
        assert load_checkpoint(tmp_path / name).config.tie_word_embeddings is tied


def test_t5_v1_1_config_before_5_0_unties_and_does_not_rescale(tmp_path: Path) -> None:
    build(FAMILIES["t5-v1.1"]).save_pretrained(tmp_path / "new")  # tie_word_embeddings: true + scale: false
    build(FAMILIES["t5-v1.1"]).save_pretrained(tmp_path / "old")
    _rewrite(tmp_path / "old", drop=("scale_decoder_outputs",), tie_word_embeddings=False)
    new, old = load_checkpoint(tmp_path / "new").config, load_checkpoint(tmp_path / "old").config
    assert new == old and not old.tie_word_embeddings and not old.scale_lm_head_input
    assert max_diff(_seq2seq_logits(tmp_path / "old"), _seq2seq_logits(tmp_path / "new")) == 0.0


def test_t5_v1_0_config_before_5_0_ties_and_rescales(tmp_path: Path) -> None:
    build(FAMILIES["t5"]).save_pretrained(tmp_path / "t5")
    _rewrite(tmp_path / "t5", drop=("scale_decoder_outputs", "tie_word_embeddings"))
    config = load_checkpoint(tmp_path / "t5").config
    assert config.tie_word_embeddings and config.scale_lm_head_input


def test_t5_tied_without_rescaling_as_5_x_writes_a_tied_v1_1(tmp_path: Path) -> None:
    """transformers 5 ties a v1.1 head in memory and saves `tie_word_embeddings: true, scale_decoder_outputs: false`."""
    config = transformers.T5Config(**FAMILIES["t5-v1.1"].config)
    model = transformers.T5ForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert loaded.config.tie_word_embeddings and not loaded.config.scale_lm_head_input
    ids, mask = padded_batch(0)
    target = torch.randint(3, 90, (3, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(ids, attention_mask=mask, decoder_input_ids=target).logits
    assert max_diff(_seq2seq_logits(tmp_path), expected) <= TOLERANCE


def test_tensorflow_era_names_and_buffers(tmp_path: Path) -> None:
    """Old BERT files: `LayerNorm.gamma`/`.beta` and a saved `position_ids` buffer."""
    build(FAMILIES["bert"]).save_pretrained(tmp_path / "new")
    state = load_file(tmp_path / "new" / "model.safetensors")
    old = {key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): value
           for key, value in state.items()}
    old["bert.embeddings.position_ids"] = torch.arange(40)[None]
    (tmp_path / "old").mkdir()
    save_file(old, tmp_path / "old" / "model.safetensors")
    (tmp_path / "old" / "config.json").write_text((tmp_path / "new" / "config.json").read_text())
    loaded = load_checkpoint(tmp_path / "old")
    assert set(loaded.extra_state) == {"classifier.weight", "classifier.bias", "pooler.dense.weight",
                                       "pooler.dense.bias"}
    reference = load_checkpoint(tmp_path / "new").backbone_state
    assert all(torch.equal(loaded.backbone_state[key], reference[key]) for key in reference)


def test_dtype_auto_and_explicit(tmp_path: Path) -> None:
    build(FAMILIES["gpt2"]).to(torch.bfloat16).save_pretrained(tmp_path)
    assert next(from_pretrained(tmp_path).parameters()).dtype == torch.float32
    assert next(from_pretrained(tmp_path, dtype="auto").parameters()).dtype == torch.bfloat16
    model = from_pretrained(tmp_path, dtype=torch.float16)
    assert model.lm_head.weight is model.embeddings.token.weight and model.lm_head.weight.dtype == torch.float16


def test_buffers_older_releases_saved_are_ignored(tmp_path: Path) -> None:
    """GPT-2's causal-mask buffers and Llama's `inv_freq` were saved before 4.31; they are not weights."""
    buffers = {"gpt2": ["transformer.h.0.attn.bias", "transformer.h.1.attn.masked_bias"],
               "llama": ["model.layers.0.self_attn.rotary_emb.inv_freq"]}
    for name, keys in buffers.items():
        folder = tmp_path / name
        build(FAMILIES[name]).save_pretrained(folder)
        state = load_file(folder / "model.safetensors")
        state.update({key: torch.ones(4) for key in keys})
        save_file(state, folder / "model.safetensors")
        assert load_checkpoint(folder).extra_state == {}
