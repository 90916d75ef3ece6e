"""LoRA adapters on nlpkit backbones (nlpkit/adapters.py) against peft on the transformers model.

The same tiny random BERT is loaded by both libraries; peft wraps
transformers' query and value layers, nlpkit wraps its own through peft's
`inject_adapter_in_model`, and the adapter weights (random, so that the
adapters change the outputs) are copied from one to the other.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from nlpkit.adapters import apply_adapters, merge_adapters, target_module_names
from nlpkit.backbones import from_pretrained
from nlpkit.errors import NlpkitError
from nlpkit.recipe import PeftSection
from tests.parity._tiny import FAMILIES, build, padded_batch

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

_HF_NAMES = {"query": "attention.self.query", "value": "attention.self.value", "key": "attention.self.key"}


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory: Any) -> Path:
    folder = tmp_path_factory.mktemp("bert")
    build(FAMILIES["bert"]).bert.save_pretrained(folder)
    return folder


def _both(folder: Path, section: PeftSection) -> tuple[Any, Any]:
    """nlpkit's and peft's adapted models, with the same random adapter weights."""
    ours = from_pretrained(folder)
    apply_adapters(ours, section)
    config = peft.LoraConfig(r=section.r, lora_alpha=section.alpha, use_dora=section.use_dora,
                             use_rslora=section.use_rslora, target_modules=section.target_modules)
    theirs = peft.get_peft_model(transformers.BertModel.from_pretrained(folder), config).eval()
    torch.manual_seed(3)
    ours_state = dict(ours.named_parameters())
    with torch.no_grad():
        for name, parameter in theirs.named_parameters():
            found = re.search(r"layer\.(\d+)\.attention\.self\.(\w+)\.(lora_\w+)\.default(?:\.weight)?$", name)
            if found is None:
                continue
            parameter.normal_(0, 0.3)
            layer, which, part = found.groups()
            key = f"layers.{layer}.attention.{which}.{part}.default" + (".weight" if name.endswith(".weight") else "")
            ours_state[key].copy_(parameter)
    return ours.eval(), theirs


@pytest.mark.parametrize("variant", [{}, {"use_dora": True}, {"use_rslora": True}])
def test_adapted_outputs_match_peft_on_transformers(bert_folder: Path, variant: dict[str, Any]) -> None:
    section = PeftSection(r=4, alpha=8, target_modules=["query", "value"], **variant)
    ours, theirs = _both(bert_folder, section)
    ids, mask = padded_batch(0)
    with torch.no_grad():
        diff = (ours(ids, attention_mask=mask).last_hidden_state - theirs(input_ids=ids, attention_mask=mask)
                .last_hidden_state)[mask.bool()].abs().max().item()
        plain = from_pretrained(bert_folder)(ids, attention_mask=mask).last_hidden_state
    assert diff < 1e-5
    assert (ours(ids, attention_mask=mask).last_hidden_state - plain).abs().max().item() > 1e-3  # the adapters act


def test_merging_keeps_the_outputs_and_leaves_plain_linear_layers(bert_folder: Path) -> None:
    ours, _ = _both(bert_folder, PeftSection(r=4, target_modules=["query", "value"], use_dora=True))
    ids, mask = padded_batch(0)
    with torch.no_grad():
        before = ours(ids, attention_mask=mask).last_hidden_state
        assert merge_adapters(ours) == 4  # query and value of 2 layers
        after = ours(ids, attention_mask=mask).last_hidden_state
    assert (before - after).abs().max().item() < 1e-5
    assert not any("lora_" in name for name, _ in ours.named_parameters())
    query = ours.layers[0].attention.query  # the backbone's own Linear again, no peft wrapper
    assert isinstance(query, torch.nn.Linear) and not isinstance(query, peft.tuners.lora.LoraLayer)


def test_only_adapters_train_and_targets_use_nlpkit_names(bert_folder: Path) -> None:
    backbone = from_pretrained(bert_folder)
    section = PeftSection(r=2, target_modules=["attention_output", "mlp"], layers=[1])
    assert target_module_names(backbone, section) == ["layers.1.attention.output", "layers.1.mlp.up",
                                                      "layers.1.mlp.down"]
    trainable, total = apply_adapters(backbone, section)
    hidden, ffn = 32, 48
    assert trainable == 2 * (hidden + hidden) + 2 * (hidden + ffn) + 2 * (ffn + hidden)  # r * (in + out) each
    assert total == sum(p.numel() for p in backbone.parameters())
    assert {n for n, p in backbone.named_parameters() if p.requires_grad} == {
        n for n, _ in backbone.named_parameters() if "lora_" in n}


def test_targets_that_match_nothing_name_the_layers_there_are(bert_folder: Path) -> None:
    backbone = from_pretrained(bert_folder)
    with pytest.raises(NlpkitError) as raised:
        target_module_names(backbone, PeftSection(target_modules=["q_proj"]))
    message = str(raised.value)
    assert "\n" not in message and "peft.target_modules: ['q_proj'] match no Linear layer" in message
    assert "attention.query, attention.value, mlp.down, mlp.up" in message
