"""Fine-tuning pretrained decoders of each current family: a two-step run, `nlpkit generate` on it, and its export.

Each tiny random checkpoint (the parity tests' configs, one variant per
model type, with a window and scaled rotary where the family has them) gets
a byte-level BPE tokenizer in its folder and is fine-tuned for two steps
through a generation recipe with `backbone.pretrained`. The run keeps the
family's architecture (the backbone config read from the folder), its
weights move, `nlpkit generate RUN` prints what `nlpkit.load(RUN).generate`
returns, and the exported folder loads in the family's `*ForCausalLM` with
the run's logits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import nlpkit
from nlpkit.backbones.checkpoints import checkpoint_config
from nlpkit.cli import main
from nlpkit.testing import tiny_recipe, tiny_tokenizer, write_rows
from tests.parity._tiny import FAMILIES, build

transformers = pytest.importorskip("transformers")

WORDS = "the cat sat on a mat and the dog ran to the big red house by the sea".split()
TEXTS = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]
_WINDOW = dict(sliding_window=8)
_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16}
CHANGES: dict[str, dict[str, Any]] = {
    "llama": dict(rope_parameters=dict(_YARN)),
    "mistral": dict(_WINDOW),
    "qwen2": dict(_WINDOW, use_sliding_window=True, max_window_layers=1),
    "qwen3": dict(rope_parameters=dict(_YARN)),
    "gemma": {},
    "gemma2": {},
    "gemma3_text": {},
    "phi3": dict(_WINDOW),
}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tiny_tokenizer(TEXTS, vocab_size=300, max_length=32)


def _pretrained(family: str, tokenizer: Any, folder: Path) -> Any:
    ids = {role: tokenizer.token_id(role) for role in ("bos", "eos", "pad")}
    config = dict(FAMILIES[family].config, **CHANGES.get(family, {}), vocab_size=tokenizer.vocab_size, max_position_embeddings=64,
                  bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"])
    reference = build(dataclasses.replace(FAMILIES[family], config=config))
    reference.save_pretrained(folder)
    tokenizer.save(folder)
    return reference


@pytest.mark.slow
@pytest.mark.parametrize("family", list(CHANGES))
def test_two_step_fine_tuning_then_generate_and_export(family: str, tokenizer: Any, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "pretrained"
    reference = _pretrained(family, tokenizer, folder)
    train = write_rows(tmp_path / "train.jsonl", [{"text": text} for text in TEXTS])
    recipe = tiny_recipe("generation", {"train": str(train), "validation": str(train), "format": "jsonl"},
                         tmp_path / "runs", "decoder", options={"block_size": 16})
    recipe["backbone"] = {"pretrained": str(folder)}
    recipe["tokenizer"] = {"max_length": 32}  # the folder's tokenizer, cut to 32 tokens
    result = nlpkit.run(recipe)

    model = nlpkit.load(result.run_dir)
    backbone = model.model.backbone
    assert backbone.config == checkpoint_config(folder).config  # the family's architecture survives the run
    before = dict(reference.named_parameters())["model.embed_tokens.weight"]
    assert not torch.equal(backbone.get_input_embeddings().weight, before)  # two steps moved the weights

    capsys.readouterr()
    assert main(["generate", str(result.run_dir), "the cat", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.rstrip("\n") == model.generate("the cat", max_new_tokens=5)

    exported = transformers.AutoModelForCausalLM.from_pretrained(model.export(tmp_path / "hf")).eval()
    assert type(exported).__name__ == type(reference).__name__
    ids = torch.tensor([model.task.encode_prompts(["the cat sat on a mat and the dog"])[0]])
    with torch.no_grad():
        ours = backbone.logits(backbone(ids).last_hidden_state)
        assert (ours - exported(ids).logits).abs().max().item() <= 1e-4
