"""ModernBERT matches `transformers`: local and global layers, their rotary bases, fused weights, export.

Tiny random checkpoints (random norms; 4 layers, every third global, so
layers 0 and 3 are global and 1 and 2 local; `local_attention` 4, so a
query sees `|i - j| <= 2`) run a right-padded batch of 24 tokens, far past
the window. The local and global layers turn at different rotary bases,
written the transformers 5 way (`rope_parameters` per layer type) or the
older one (`global_rope_theta` / `local_rope_theta` and
`global_attn_every_n_layers`, with and without a flat `rope_scaling` that
scales both). Checked: the last hidden state at real positions, that the
window and the local base do change the output (so the comparison would
see them missing), the split of the fused `Wqkv` and `Wi` and their fusion
on export, the export read back by `ModernBertModel` and, with the head's
extra state, by `ModernBertForSequenceClassification`, and a refused
rotary type.
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
from tests.parity._tiny import FAMILIES, TOLERANCE, build, max_diff, right_padded_batch, transformers

LENGTH, LOCAL_ATTENTION, PAD = 24, 4, 0
_ROPE = {"full_attention": {"rope_type": "default", "rope_theta": 80000.0},
         "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0}}
# transformers' defaults: no biases, bias-less norms.
_CONFIG = dict(FAMILIES["modernbert"].config, num_hidden_layers=4, global_attn_every_n_layers=3,
               local_attention=LOCAL_ATTENTION, norm_bias=False, attention_bias=False, mlp_bias=False,
               rope_parameters=_ROPE)
_OLDER = dict(rope_parameters=None, layer_types=None, global_attn_every_n_layers=3, global_rope_theta=80000.0,
              local_rope_theta=5000.0)
# Folder variants: the config.json keys rewritten after save_pretrained (None removes the key).
VARIANTS: dict[str, dict[str, Any]] = {
    "rope_parameters": {},
    "older": _OLDER,
    "older-scaled": dict(_OLDER, rope_scaling={"rope_type": "linear", "factor": 2.0}),
}


def _reference_model() -> Any:
    return build(dataclasses.replace(FAMILIES["modernbert"], config=_CONFIG))


def _rewrite(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def _hidden(model: Any) -> torch.Tensor:
    ids, mask = right_padded_batch(LENGTH, PAD)
    with torch.no_grad():
        return model(ids, attention_mask=mask).last_hidden_state


def _reload(folder: Path) -> Any:
    return transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.fixture(scope="module", params=list(VARIANTS))
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Any, Any]:
    name = request.param
    folder = tmp_path_factory.mktemp(name) / "ckpt"
    _reference_model().save_pretrained(folder)
    _rewrite(folder, **VARIANTS[name])
    return name, folder, _reload(folder), from_pretrained(folder).eval()


def test_config_reads_the_family_fields(models: tuple[str, Path, Any, Any]) -> None:
    name, _, reference, ours = models
    config, hf = ours.config, reference.config
    assert hf.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    assert [config.layer_window(i) is not None for i in range(config.num_layers)] == [
        t == "sliding_attention" for t in hf.layer_types]
    assert config.sliding_window == hf.sliding_window + 1 == LOCAL_ATTENTION // 2 + 1  # |i - j| <= 2
    assert (config.rope_theta, config.local_rope_theta) == (80000.0, 5000.0)
    scaling = [None if s is None else (s.type, s.factor) for s in (config.rope_scaling, config.local_rope_scaling)]
    assert scaling == ([("linear", 2.0)] * 2 if name == "older-scaled" else [None, None])
    assert not config.norm_bias and ours.final_norm.bias is None
    assert isinstance(ours.layers[0].attention_norm, torch.nn.Identity)
    assert isinstance(ours.layers[1].attention_norm, torch.nn.LayerNorm)


def test_hidden_states_match_transformers(models: tuple[str, Path, Any, Any]) -> None:
    _, _, reference, ours = models
    mask = right_padded_batch(LENGTH, PAD)[1]
    assert max_diff(_hidden(ours), _hidden(reference), mask) < TOLERANCE


@pytest.mark.parametrize("change", [dict(local_attention=64), dict(rope_parameters={
    **_ROPE, "sliding_attention": _ROPE["full_attention"]})], ids=["no-window", "one-base"])
def test_window_and_local_base_change_the_output(change: dict[str, Any], tmp_path: Path) -> None:
    """Without the window or the local base the outputs differ: the parity above would catch either missing."""
    _reference_model().save_pretrained(tmp_path)
    ours = from_pretrained(tmp_path).eval()
    _rewrite(tmp_path, **change)
    changed = _reload(tmp_path)
    mask = right_padded_batch(LENGTH, PAD)[1]
    assert max_diff(_hidden(ours), _hidden(changed), mask) > 1e-3
    assert max_diff(_hidden(from_pretrained(tmp_path).eval()), _hidden(changed), mask) < TOLERANCE


def test_fused_weights_are_split_and_fused_back(tmp_path: Path) -> None:
    reference = build(FAMILIES["modernbert"])  # with biases, so that their split shows too
    reference.save_pretrained(tmp_path / "ckpt")
    ours = from_pretrained(tmp_path / "ckpt")
    hidden, inner = ours.config.hidden_size, ours.config.intermediate_size
    attention, mlp = reference.model.layers[1].attn, reference.model.layers[1].mlp
    assert torch.equal(ours.layers[1].attention.key.weight, attention.Wqkv.weight[hidden : 2 * hidden])
    assert torch.equal(ours.layers[1].attention.value.bias, attention.Wqkv.bias[2 * hidden :])
    assert torch.equal(ours.layers[1].mlp.gate.weight, mlp.Wi.weight[:inner])  # the activated half
    assert torch.equal(ours.layers[1].mlp.up.bias, mlp.Wi.bias[inner:])
    out = save_pretrained(ours, tmp_path / "out", family="modernbert")
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    for key in ("attn.Wqkv.weight", "attn.Wqkv.bias", "mlp.Wi.weight", "mlp.Wi.bias"):
        assert torch.equal(saved[f"layers.1.{key}"], reference.model.layers[1].get_parameter(key))
    assert not [key for key in saved if "Wqkv_" in key or "Wi_" in key or key.startswith("layers.0.attn_norm")]


def test_export_loads_in_transformers(models: tuple[str, Path, Any, Any], tmp_path: Path) -> None:
    _, _, reference, ours = models
    out = save_pretrained(ours, tmp_path / "out", family="modernbert")
    reloaded = _reload(out)
    assert type(reloaded).__name__ == "ModernBertModel"
    assert reloaded.config.layer_types == reference.config.layer_types
    assert reloaded.config.sliding_window == reference.config.sliding_window
    mask = right_padded_batch(LENGTH, PAD)[1]
    assert max_diff(_hidden(ours), _hidden(reloaded), mask) < TOLERANCE
    assert from_pretrained(out).config == ours.config


def test_export_with_the_head_loads_as_the_head_class(tmp_path: Path) -> None:
    source = _reference_model()  # ModernBertForSequenceClassification, mean pooling, 3 labels
    source.save_pretrained(tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert {"head.dense.weight", "head.norm.weight", "classifier.weight", "classifier.bias"} <= set(loaded.extra_state)
    out = save_pretrained(from_pretrained(tmp_path / "ckpt"), tmp_path / "out", family=loaded.family,
                          extra_state=loaded.extra_state, hf_config=loaded.hf_config)
    exported = transformers.AutoModelForSequenceClassification.from_pretrained(
        out, attn_implementation="eager").eval()
    assert type(exported).__name__ == "ModernBertForSequenceClassification"
    ids, mask = right_padded_batch(LENGTH, PAD)
    with torch.no_grad():
        assert max_diff(exported(ids, attention_mask=mask).logits, source(ids, attention_mask=mask).logits) < TOLERANCE


def test_unsupported_rotary_type_is_refused_in_one_line(tmp_path: Path) -> None:
    _reference_model().save_pretrained(tmp_path)
    _rewrite(tmp_path, rope_parameters={**_ROPE, "sliding_attention": {"rope_type": "proportional",
                                                                       "rope_theta": 5000.0}})
    with pytest.raises(NlpkitError, match=r"rope_parameters\.sliding_attention\.rope_type='proportional'") as error:
        from_pretrained(tmp_path)
    assert "\n" not in str(error.value)


# The fields of answerdotai/ModernBERT-base's config.json that shape the backbone (the older spelling).
_RELEASED_BASE = dict(model_type="modernbert", vocab_size=50368, hidden_size=768, intermediate_size=1152,
                      num_hidden_layers=22, num_attention_heads=12, max_position_embeddings=8192,
                      global_attn_every_n_layers=3, local_attention=128, global_rope_theta=160000.0,
                      local_rope_theta=10000.0, norm_eps=1e-5, norm_bias=False, hidden_activation="gelu",
                      pad_token_id=50283, reference_compile=True, deterministic_flash_attn=False,
                      classifier_pooling="mean")


def test_released_config_reads_as_transformers_reads_it() -> None:
    from nlpkit.backbones.checkpoints import modernbert

    hf = transformers.ModernBertConfig(**_RELEASED_BASE)
    config = modernbert.config_from_hf(_RELEASED_BASE, "modernbert")
    assert [config.layer_window(i) is not None for i in range(config.num_layers)] == [
        t == "sliding_attention" for t in hf.layer_types]
    assert config.sliding_window == hf.sliding_window + 1 == 65  # |i - j| <= 64
    assert (config.rope_theta, config.local_rope_theta) == (hf.rope_parameters["full_attention"]["rope_theta"],
                                                            hf.rope_parameters["sliding_attention"]["rope_theta"])
    assert (config.intermediate_size, config.activation, config.gated_mlp) == (1152, "gelu", True)
