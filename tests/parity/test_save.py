"""Export round trip: an nlpkit backbone saved with `save_pretrained` loads in `transformers` unchanged.

The backbone's weights are re-randomised after loading, so the test proves
that the saved folder carries nlpkit's weights (and config) rather than the
ones it came from. `transformers.AutoModel` must give the same hidden states,
and the family's head class the same LM logits, with no weight missing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nlpkit.backbones import from_pretrained
from nlpkit.backbones.checkpoints import load_checkpoint, save_pretrained
from tests.parity._tiny import FAMILIES, TOLERANCE, build, max_diff, padded_batch, transformers

_HEAD_CLASSES = {"decoder": "AutoModelForCausalLM", "encoder-decoder": "AutoModelForSeq2SeqLM"}


def _randomise(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(3)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.2)
        for name, buffer in module.named_buffers():
            if name == "final_logits_bias":
                buffer.normal_()
    return module.eval()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_round_trip_through_transformers(name: str, tmp_path: Path) -> None:
    family = FAMILIES[name]
    source = build(family)
    source.save_pretrained(tmp_path / "source")
    loaded = load_checkpoint(tmp_path / "source")
    ours = _randomise(from_pretrained(tmp_path / "source"))
    out = save_pretrained(ours, tmp_path / "out", family=loaded.family)

    pad = source.config.pad_token_id
    ids, mask = padded_batch(pad if pad is not None else 0)
    reference = transformers.AutoModel.from_pretrained(out).eval()
    with torch.no_grad():
        if family.kind == "encoder":
            diff = max_diff(ours(ids, attention_mask=mask).last_hidden_state,
                            reference(ids, attention_mask=mask).last_hidden_state, mask)
            assert diff <= TOLERANCE
            return
        head_class = getattr(transformers, _HEAD_CLASSES[family.kind])
        head, info = head_class.from_pretrained(out, output_loading_info=True)
        assert not info["missing_keys"] and not info["mismatched_keys"], info
        if family.kind == "decoder":
            hidden = ours(ids, attention_mask=mask).last_hidden_state
            expected = reference(ids, attention_mask=mask).last_hidden_state
            logits = head.eval()(ids, attention_mask=mask).logits
            real = mask
        else:
            target = torch.randint(3, 90, (3, 6), generator=torch.Generator().manual_seed(2))
            hidden = ours(ids, attention_mask=mask, decoder_input_ids=target).last_hidden_state
            expected = reference(ids, attention_mask=mask, decoder_input_ids=target).last_hidden_state
            logits = head.eval()(ids, attention_mask=mask, decoder_input_ids=target).logits
            real = None
    assert max_diff(hidden, expected, real) <= TOLERANCE
    assert max_diff(ours.logits(hidden), logits, real) <= TOLERANCE


def test_classification_head_and_original_config_travel_with_the_backbone(tmp_path: Path) -> None:
    source = build(FAMILIES["bert"])  # BertForSequenceClassification, 3 labels
    source.save_pretrained(tmp_path / "source")
    loaded = load_checkpoint(tmp_path / "source")
    ours = from_pretrained(tmp_path / "source")
    out = save_pretrained(ours, tmp_path / "out", family=loaded.family, extra_state=loaded.extra_state,
                          hf_config=loaded.hf_config)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 3

    exported = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    ids, mask = padded_batch(0)
    with torch.no_grad():
        assert max_diff(exported(ids, attention_mask=mask).logits, source(ids, attention_mask=mask).logits) <= TOLERANCE
