"""Scaled rotary positions (`linear`, `dynamic`, `yarn`, `llama3`, `longrope`) against `transformers`.

Each tiny random `LlamaForCausalLM` has a 32-position pretraining length and
runs a 48-token batch (one full, one right-padded, one left-padded row), so
that the length-dependent types switch to their long-context frequencies
inside the batch. Head dim 8 means 4 frequencies; the parameters are chosen
so every branch of each formula is taken (e.g. `llama3` has a kept, a
smoothed and two scaled frequencies).
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
from nlpkit.backbones.config import BackboneConfig, RopeScaling
from nlpkit.backbones.layers import apply_rotary, rotary_cos_sin
from nlpkit.errors import NlpkitError
from tests.parity._tiny import (
    FAMILIES,
    TOLERANCE,
    Family,
    build,
    incremental_logits,
    max_diff,
    padded_batch,
    transformers,
)

ORIGINAL, LENGTH, PREFIX = 32, 48, 24

ROPES: dict[str, dict[str, Any]] = {
    "default": {"rope_type": "default", "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16},
    "yarn-mscale": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
                    "mscale": 1.0, "mscale_all_dim": 0.5, "beta_fast": 0.5, "beta_slow": 0.05, "truncate": False},
    "llama3": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 0.5,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    "longrope": {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": ORIGINAL,
                 "short_factor": [1.0, 1.1, 1.3, 1.6], "long_factor": [1.0, 2.0, 5.0, 9.0]},
}
# yarn-mscale's betas put the ramp bounds at dims 0.71 and 1.71, where truncating them would change the ramp.
# longrope derives factor = max_position_embeddings / original = 4 and its attention factor from it.
_MAX_POSITIONS = {"longrope": 4 * ORIGINAL}


def _family(rope: str, **changes: Any) -> Family:
    config = dict(FAMILIES["llama"].config, rope_parameters=dict(ROPES[rope]),
                  max_position_embeddings=_MAX_POSITIONS.get(rope, ORIGINAL), **changes)
    return Family(f"llama-{rope}", "decoder", "LlamaForCausalLM", "LlamaConfig", config)


def _folder(rope: str, tmp_path: Path, **changes: Any) -> tuple[Any, Path]:
    model = build(_family(rope, **changes))
    model.save_pretrained(tmp_path / "hf")
    return model, tmp_path / "hf"


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    return padded_batch(0, length=LENGTH)


@pytest.mark.parametrize("rope", list(ROPES))
def test_full_pass_matches_transformers(rope: str, tmp_path: Path) -> None:
    reference, folder = _folder(rope, tmp_path)
    ours = from_pretrained(folder).eval()
    assert (ours.config.rope_scaling is None) == (rope == "default")
    ids, mask = _batch()
    with torch.no_grad():
        hidden = ours(ids, attention_mask=mask).last_hidden_state
        expected = reference.model(ids, attention_mask=mask).last_hidden_state
        logits = reference(ids, attention_mask=mask).logits
    assert max_diff(hidden, expected, mask) <= TOLERANCE
    assert max_diff(ours.logits(hidden), logits, mask) <= TOLERANCE


def test_explicit_head_dim_with_yarn(tmp_path: Path) -> None:
    reference, folder = _folder("yarn", tmp_path, head_dim=16)
    ours = from_pretrained(folder).eval()
    assert ours.config.resolved_head_dim == 16 != ours.config.hidden_size // ours.config.num_heads
    ids, mask = _batch()
    with torch.no_grad():
        logits = ours.logits(ours(ids, attention_mask=mask).last_hidden_state)
        expected = reference(ids, attention_mask=mask).logits
    assert max_diff(logits, expected, mask) <= TOLERANCE


@pytest.mark.parametrize("rope", ["default", "linear", "yarn", "llama3"])
def test_cached_decoding_equals_the_full_pass(rope: str, tmp_path: Path) -> None:
    _, folder = _folder(rope, tmp_path)
    ours = from_pretrained(folder).eval()
    ids = torch.randint(3, 90, (2, LENGTH), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = ours.logits(ours(ids).last_hidden_state)
        assert max_diff(incremental_logits(ours, ids, PREFIX), full) <= 1e-5


@pytest.mark.parametrize("rope", ["dynamic", "longrope"])
def test_length_dependent_cached_decoding_matches_transformers_cached_decoding(rope: str, tmp_path: Path) -> None:
    # Frequencies follow each call's positions (see nlpkit/backbones/rope.py): past ORIGINAL, new tokens turn at
    # long-context frequencies while the cached keys keep theirs, as in transformers' dynamic_rope_update.
    reference, folder = _folder(rope, tmp_path)
    ours = from_pretrained(folder).eval()
    ids = torch.randint(3, 90, (2, LENGTH), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cached = incremental_logits(ours, ids, PREFIX)
        assert max_diff(cached, incremental_logits(reference, ids, PREFIX)) <= TOLERANCE
        # ... which is not the full pass once the prefix is outgrown: the comparison above can see the rule.
        assert max_diff(cached, ours.logits(ours(ids).last_hidden_state)) > 1e-3


@pytest.mark.parametrize("rope", [name for name in ROPES if name != "default"])
def test_export_reloads_in_transformers_with_the_same_rope_parameters(rope: str, tmp_path: Path) -> None:
    reference, folder = _folder(rope, tmp_path)
    loaded = load_checkpoint(folder)
    ours = from_pretrained(folder).eval()
    out = save_pretrained(ours, tmp_path / "out", family=loaded.family)
    exported = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert exported.config.rope_parameters == reference.config.rope_parameters
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["rope_type"] == ROPES[rope]["rope_type"]
    assert load_checkpoint(out).config == loaded.config
    ids, mask = _batch()
    with torch.no_grad():
        assert max_diff(exported(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits,
                        mask) <= TOLERANCE


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"rope_parameters": None, "rope_scaling": {"type": "su", "short_factor": [1.0] * 4,
                                                    "long_factor": [2.0] * 4}, "rope_theta": 500.0}, None),
        ({"rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 500.0}, None),
        ({"rope_parameters": {"rope_type": "proportional", "rope_theta": 1e4}}, "rope_parameters.rope_type"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0, "magic": 1}},
         "rope_parameters.magic"),
        ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4}}, "factor is needed"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ],
)
def test_older_forms_load_and_inexpressible_ones_name_the_field(tmp_path: Path, changes: dict[str, Any],
                                                                field: str | None) -> None:
    build(FAMILIES["llama"]).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(changes)
    (tmp_path / "config.json").write_text(json.dumps(config))
    if field is None:
        loaded = load_checkpoint(tmp_path).config
        assert loaded.rope_theta == 500.0 and loaded.rope_scaling is not None
        assert loaded.rope_scaling.type == ("longrope" if changes["rope_scaling"]["type"] == "su" else "linear")
        return
    with pytest.raises(NlpkitError, match=field):
        load_checkpoint(tmp_path)


def test_partial_rotary_matches_transformers_phi() -> None:
    # transformers' Llama ignores partial_rotary_factor, so the shared maths is checked against Phi's, which
    # rotates the first rotary_dim dimensions and passes the rest (with a scaled type, to cover both at once).
    rope = dict(ROPES["yarn"], partial_rotary_factor=0.5)
    phi = transformers.PhiConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=ORIGINAL,
                                 rope_parameters=rope)
    from transformers.models.phi import modeling_phi

    rotary = modeling_phi.PhiRotaryEmbedding(phi)
    config = BackboneConfig(kind="decoder", hidden_size=64, num_heads=4, max_positions=ORIGINAL,
                            position_embedding="rotary", rope_theta=1e4, partial_rotary_factor=0.5,
                            rope_scaling=RopeScaling(type="yarn", factor=4.0, original_max_positions=16))
    assert config.rotary_dim == 8
    positions = torch.arange(LENGTH)[None]
    q = torch.randn(1, 4, LENGTH, 16, generator=torch.Generator().manual_seed(5))
    cos, sin = rotary(q, positions)
    dim = cos.shape[-1]
    expected, _ = modeling_phi.apply_rotary_pos_emb(q[..., :dim], q[..., :dim], cos, sin)
    expected = torch.cat([expected, q[..., dim:]], dim=-1)
    ours = apply_rotary(q, *rotary_cos_sin(positions, config, torch.float32))
    assert max_diff(ours, expected) <= 1e-5
    assert max_diff(ours[..., 8:], q[..., 8:]) == 0.0
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        dataclasses.replace(config, partial_rotary_factor=1.5)
