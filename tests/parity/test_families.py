"""Parity of every family with `transformers`: hidden states, LM logits, cached decoding.

For each family a tiny random model is saved the ways real checkpoints
come (base class, head class, sharded safetensors, an older release's
`.bin`), loaded with `nlpkit.backbones.from_pretrained`, and compared with
`transformers.AutoModel.from_pretrained` of the same folder on a padded batch
(at real positions), in fp32, to `TOLERANCE`. Decoders and encoder-decoders
also decode step by step through the KV cache and must match the full pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nlpkit.backbones import from_pretrained
from nlpkit.backbones.checkpoints import load_checkpoint
from tests.parity._tiny import FAMILIES, TOLERANCE, build, max_diff, padded_batch, save_bin, transformers

VARIANTS = ["base", "head", "sharded", "bin"]


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    """One random head-class model per family, built once for the module."""
    return {}


def _model(models: dict[str, Any], name: str) -> Any:
    if name not in models:
        models[name] = build(FAMILIES[name])
    return models[name]


def _save(model: Any, variant: str, tmp_path: Path) -> Path:
    folder = tmp_path / variant
    if variant == "head":
        model.save_pretrained(folder)
    elif variant == "sharded":
        model.save_pretrained(folder, max_shard_size="20KB")
        assert (folder / "model.safetensors.index.json").is_file()
    elif variant == "bin":
        save_bin(model, folder)
    elif variant == "bin-sharded":
        save_bin(model, folder, shards=3)
    else:  # base: what AutoModel would save
        model.save_pretrained(tmp_path / "from")
        transformers.AutoModel.from_pretrained(tmp_path / "from").save_pretrained(folder)
    return folder


def _source_batch(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
    pad = model.config.pad_token_id
    return padded_batch(pad if pad is not None else 0)


def _compare(name: str, variant: str, model: Any, folder: Path) -> dict[str, float]:
    """Max abs differences of nlpkit vs transformers for one saved folder."""
    kind = FAMILIES[name].kind
    ours = from_pretrained(folder)
    reference = transformers.AutoModel.from_pretrained(folder).eval()
    ids, mask = _source_batch(model)
    diffs: dict[str, float] = {}
    with torch.no_grad():
        if kind == "encoder":
            expected = reference(ids, attention_mask=mask).last_hidden_state
            diffs["hidden"] = max_diff(ours(ids, attention_mask=mask).last_hidden_state, expected, mask)
        elif kind == "decoder":
            hidden = ours(ids, attention_mask=mask).last_hidden_state
            diffs["hidden"] = max_diff(hidden, reference(ids, attention_mask=mask).last_hidden_state, mask)
            # Generation-style positions: each row counts from its first real token.
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            shifted = ours(ids, attention_mask=mask, position_ids=positions).last_hidden_state
            expected = reference(ids, attention_mask=mask, position_ids=positions).last_hidden_state
            diffs["hidden_positions"] = max_diff(shifted, expected, mask)
            if variant != "base":
                diffs["logits"] = max_diff(ours.logits(hidden), model(ids, attention_mask=mask).logits, mask)
        else:
            target = torch.randint(3, 90, (ids.shape[0], 6), generator=torch.Generator().manual_seed(2))
            out = ours(ids, attention_mask=mask, decoder_input_ids=target)
            expected = reference(ids, attention_mask=mask, decoder_input_ids=target)
            diffs["encoder_hidden"] = max_diff(out.encoder_last_hidden_state, expected.encoder_last_hidden_state, mask)
            diffs["hidden"] = max_diff(out.last_hidden_state, expected.last_hidden_state)
            if variant != "base":
                logits = model(ids, attention_mask=mask, decoder_input_ids=target).logits
                diffs["logits"] = max_diff(ours.logits(out.last_hidden_state), logits)
    return diffs


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_outputs_match_transformers(name: str, variant: str, models: dict[str, Any], tmp_path: Path) -> None:
    model = _model(models, name)
    diffs = _compare(name, variant, model, _save(model, variant, tmp_path))
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.parametrize("name", ["bert", "gpt2", "t5-v1.1"])
def test_sharded_bin(name: str, models: dict[str, Any], tmp_path: Path) -> None:
    model = _model(models, name)
    diffs = _compare(name, "bin-sharded", model, _save(model, "bin-sharded", tmp_path))
    assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.parametrize("name", ["bert", "roberta", "xlm-roberta", "electra", "distilbert"])
def test_head_weights_come_back_as_extra_state(name: str, models: dict[str, Any], tmp_path: Path) -> None:
    from safetensors import safe_open

    model = _model(models, name)
    folder = _save(model, "head", tmp_path)
    loaded = load_checkpoint(folder)
    prefix = model.base_model_prefix + "."
    with safe_open(folder / "model.safetensors", "pt") as file:
        expected = {key for key in file.keys() if not key.startswith(prefix)}  # tied copies are not in the file
    assert expected and expected <= set(loaded.extra_state)
    for key in expected:
        assert torch.equal(loaded.extra_state[key], model.state_dict()[key])
    assert not any(key.startswith(prefix) for key in loaded.extra_state)


def test_untied_t5_head_is_kept(models: dict[str, Any], tmp_path: Path) -> None:
    model = _model(models, "t5-v1.1")
    loaded = load_checkpoint(_save(model, "head", tmp_path))
    assert not loaded.config.tie_word_embeddings and not loaded.config.scale_lm_head_input
    assert torch.equal(loaded.backbone_state["lm_head.weight"], model.lm_head.weight)


# ---------------------------------------------------------------------------
# Cached decoding
# ---------------------------------------------------------------------------

GENERATIVE = [name for name, family in FAMILIES.items() if family.kind != "encoder"]


@pytest.mark.parametrize("name", GENERATIVE)
def test_cached_decoding_matches_full_pass(name: str, models: dict[str, Any], tmp_path: Path) -> None:
    model = _model(models, name)
    ours = from_pretrained(_save(model, "head", tmp_path))
    ids, mask = _source_batch(model)
    with torch.no_grad():
        if FAMILIES[name].kind == "decoder":
            ids[1, 5:], mask[1, 5:] = ids[1, :4].clone(), 1  # left padding only, as when generating
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            full = ours(ids, attention_mask=mask, position_ids=positions).last_hidden_state
            expected = model(ids, attention_mask=mask, position_ids=positions).logits
            out = ours(ids[:, :3], attention_mask=mask[:, :3], position_ids=positions[:, :3], use_cache=True)
            steps = [out.last_hidden_state]
            for t in range(3, ids.shape[1]):
                out = ours(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], position_ids=positions[:, t : t + 1],
                           past_key_values=out.past_key_values, use_cache=True)
                steps.append(out.last_hidden_state)
            real = mask
        else:
            target = torch.randint(3, 90, (ids.shape[0], 6), generator=torch.Generator().manual_seed(2))
            full = ours(ids, attention_mask=mask, decoder_input_ids=target).last_hidden_state
            expected = model(ids, attention_mask=mask, decoder_input_ids=target).logits
            encoded = ours.encode(ids, mask)
            out = ours(attention_mask=mask, decoder_input_ids=target[:, :1], encoder_outputs=encoded, use_cache=True)
            steps = [out.last_hidden_state]
            for t in range(1, target.shape[1]):
                out = ours(attention_mask=mask, decoder_input_ids=target[:, t : t + 1],
                           past_key_values=out.past_key_values, use_cache=True)
                steps.append(out.last_hidden_state)
            real = None
        stepwise = torch.cat(steps, dim=1)
        assert max_diff(stepwise, full, real) <= 1e-5
        assert max_diff(ours.logits(stepwise), expected, real) <= TOLERANCE
