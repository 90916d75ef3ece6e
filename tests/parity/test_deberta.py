"""DeBERTa-v2 and DeBERTa-v3 encoders match `transformers` (eager).

Two tiny random checkpoints of `DebertaV2ForSequenceClassification`: a
v3-like one (no absolute positions, 8 log buckets up to 16 distances,
projections shared with the content, normalised relative embeddings, both
c2p and p2c terms) and a v2-like one (absolute positions, exact distances,
its own `pos_key_proj` / `pos_query_proj`, token types). A right-padded
batch of 24 tokens, longer than the bucketed span, is compared at real
positions; the backbone exported with `save_pretrained` reads back in
`DebertaV2Model`; an fp16 autocast forward whose raw q.k passes 65504 stays
finite and close to fp32; the convolution layer is refused in one line.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from nlpkit.backbones import from_pretrained
from nlpkit.backbones.checkpoints import load_checkpoint, save_pretrained
from nlpkit.errors import NlpkitError
from tests.parity._tiny import (
    HEADS,
    HIDDEN,
    LAYERS,
    TOLERANCE,
    VOCAB,
    Family,
    build,
    max_diff,
    right_padded_batch,
    transformers,
)

LENGTH, PAD = 24, 0
_COMMON = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
               intermediate_size=48, max_position_embeddings=40, pad_token_id=PAD, num_labels=3,
               relative_attention=True)
VARIANTS: dict[str, dict[str, Any]] = {
    "v3": dict(_COMMON, share_att_key=True, pos_att_type=["p2c", "c2p"], position_buckets=8,
               max_relative_positions=16, position_biased_input=False, norm_rel_ebd="layer_norm"),
    # v2: absolute positions, exact distances clamped at 12 (< LENGTH), separate position projections.
    "v2": dict(_COMMON, share_att_key=False, pos_att_type="p2c|c2p", position_buckets=-1, max_relative_positions=12,
               position_biased_input=True, type_vocab_size=2, hidden_act="gelu_new"),
}


def _reference(name: str) -> Any:
    return build(Family(f"deberta-{name}", "encoder", "DebertaV2ForSequenceClassification", "DebertaV2Config",
                        VARIANTS[name]))


@pytest.fixture(scope="module", params=list(VARIANTS))
def models(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Any, Any]:
    name = request.param
    folder = tmp_path_factory.mktemp(name) / "ckpt"
    reference = _reference(name)
    reference.save_pretrained(folder)
    return name, folder, reference.deberta, from_pretrained(folder).eval()


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = right_padded_batch(LENGTH, PAD)
    types = (torch.arange(LENGTH) >= 10).long().expand(3, -1)  # a second segment from token 10
    return ids, mask, types


def test_hidden_states_match(models: tuple[str, Path, Any, Any]) -> None:
    name, _, reference, ours = models
    ids, mask, types = _batch()
    kwargs = {"token_type_ids": types} if name == "v2" else {}
    with torch.no_grad():
        diff = max_diff(ours(ids, attention_mask=mask, **kwargs).last_hidden_state,
                        reference(ids, attention_mask=mask, **kwargs).last_hidden_state, mask)
    assert diff <= TOLERANCE, f"{name}: {diff}"


def test_folder_reads_as_deberta(models: tuple[str, Path, Any, Any]) -> None:
    name, folder, _, ours = models
    loaded = load_checkpoint(folder)
    config = loaded.config
    assert loaded.family == "deberta-v2"
    assert config.disentangled_attention == ["p2c", "c2p"]  # v2 spells it "p2c|c2p", as older folders do
    assert config.position_embedding == ("none" if name == "v3" else "learned")
    assert config.shared_position_projections is (name == "v3")
    assert sorted(loaded.extra_state) == ["classifier.bias", "classifier.weight", "pooler.dense.bias",
                                          "pooler.dense.weight"]
    assert (ours.layers[0].attention.position_key is None) is (name == "v3")


def test_export_reads_back_in_transformers(models: tuple[str, Path, Any, Any], tmp_path: Path) -> None:
    name, folder, _, ours = models
    torch.manual_seed(3)
    with torch.no_grad():  # the export must carry these weights, not the folder's
        for param in ours.parameters():
            param.normal_(0, 0.2)
    out = save_pretrained(ours, tmp_path / "out", family=load_checkpoint(folder).family)
    reloaded, info = transformers.DebertaV2Model.from_pretrained(out, attn_implementation="eager",
                                                                 output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask, _ = _batch()
    with torch.no_grad():
        diff = max_diff(ours(ids, attention_mask=mask).last_hidden_state,
                        reloaded.eval()(ids, attention_mask=mask).last_hidden_state, mask)
    assert diff <= TOLERANCE, f"{name}: {diff}"


def test_fp16_autocast_stays_finite_past_fp16_range(models: tuple[str, Path, Any, Any]) -> None:
    name, _, _, ours = models
    scaled = copy.deepcopy(ours)  # the module fixture is shared: change a copy
    # Dimension 0 of every head: query and key are the constant 384, so each of the three terms adds
    # 384 * 384 / sqrt(8 * 3) ~ 30,000 to every score of a row: the softmax does not change, but q.k alone
    # (147,456) overflows fp16, and so does the sum of the terms even when each is scaled first.
    first = torch.arange(HEADS) * (HIDDEN // HEADS)
    with torch.no_grad():
        for layer in scaled.layers:
            attention = layer.attention
            for linear in (attention.query, attention.key):
                linear.weight[first], linear.bias[first] = 0.0, 384.0
            for linear in (attention.position_key, attention.position_query):
                if linear is not None:  # v2's own position projections: no offset there
                    linear.weight[first], linear.bias[first] = 0.0, 0.0
    ids, mask, _ = _batch()
    with torch.no_grad():
        attention = scaled.layers[0].attention
        embedded = scaled.embeddings(ids, torch.arange(LENGTH)[None])
        queries = attention.query(embedded).view(3, LENGTH, HEADS, -1).transpose(1, 2)
        keys = attention.key(embedded).view(3, LENGTH, HEADS, -1).transpose(1, 2)
        assert (queries @ keys.transpose(2, 3)).min() > 65504  # naive fp16 scores would be inf
        expected = scaled(ids, attention_mask=mask).last_hidden_state
        with torch.autocast("cpu", dtype=torch.float16):
            half = scaled(ids, attention_mask=mask).last_hidden_state
    assert torch.isfinite(half).all()
    assert max_diff(half.float(), expected, mask) <= 2e-2, name


def test_conv_layer_is_refused(tmp_path: Path) -> None:
    config = transformers.DebertaV2Config(**VARIANTS["v3"], conv_kernel_size=3)
    transformers.DebertaV2Model(config).save_pretrained(tmp_path)
    refusal = r"config.json: conv_kernel_size=3 cannot be expressed by nlpkit's backbones: the convolution layer"
    with pytest.raises(NlpkitError, match=refusal) as error:
        from_pretrained(tmp_path)
    assert "\n" not in str(error.value)
