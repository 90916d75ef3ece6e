"""Runs with LoRA adapters (`peft:` in a recipe): what trains, the run folder, load, export.

A tiny random BERT saved by transformers is fine-tuned for two steps with
adapters on its query and value layers; the run folder's weights hold the
adapters beside the frozen base weights, `nlpkit.load` merges them, and the
export (merged) loads in transformers with the unmerged run's logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import nlpkit
from nlpkit.adapters import apply_adapters
from nlpkit.backbones import from_pretrained
from nlpkit.cli import main
from nlpkit.testing import tiny_classification_data, tiny_classification_rows, tiny_recipe, tiny_tokenizer
from tests.helpers import assert_one_line_error, save_tiny_bert

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: Any) -> Path:
    tokenizer = tiny_tokenizer([r["text"] for r in tiny_classification_rows(200, 0)], kind="wordpiece",
                               vocab_size=200, max_length=64)
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), tokenizer)


def _recipe(tiny_bert: Path, tmp_path: Path, peft_section: dict[str, Any]) -> dict[str, Any]:
    recipe = tiny_recipe("classification", tiny_classification_data(tmp_path / "data"), tmp_path / "runs")
    recipe["backbone"] = {"pretrained": str(tiny_bert)}
    recipe["tokenizer"] = {"max_length": 64}
    recipe["peft"] = peft_section
    return recipe


def test_a_lora_run_trains_only_adapters_and_head_then_loads_merged_and_exports(tiny_bert: Path, tmp_path: Path) -> None:
    result = nlpkit.run(_recipe(tiny_bert, tmp_path, {"r": 4, "alpha": 8, "target_modules": ["query", "value"]}))
    weights = load_file(result.run_dir / "model.safetensors")
    # The run keeps its adapters and head; the base weights stay in the checkpoint folder.
    assert {name for name in weights if not name.startswith("head.")} == {
        f"backbone.layers.{i}.attention.{which}.lora_{part}.default.weight"
        for i in range(2) for which in ("query", "value") for part in "AB"}
    assert any(not torch.equal(weights[n], torch.zeros_like(weights[n])) for n in weights if "lora_B" in n)

    model = nlpkit.load(result.run_dir)
    assert not any("lora_" in name for name, _ in model.model.named_parameters())  # merged at load
    # The merged layers are plain Linears again, so they take the packed fast path like any loaded model.
    attention = model.model.backbone.layers[0].attention
    assert attention.query.weight.is_mkldnn and attention.value.weight.is_mkldnn
    rows = tiny_classification_rows(3, 5)
    batch = model.task.collate(model.features({"text": [r["text"] for r in rows]}))
    # The unmerged run: the base backbone with its adapters applied, the trained weights loaded.
    unmerged = nlpkit.load(result.run_dir)
    apply_adapters(backbone := from_pretrained(tiny_bert), unmerged.recipe.peft)
    unmerged.model.backbone = backbone
    assert not unmerged.model.load_state_dict(weights, strict=False).unexpected_keys
    with torch.no_grad():
        expected = unmerged.task.forward(unmerged.model.eval(), batch)
        assert (model.task.forward(model.model, batch) - expected).abs().max().item() < 1e-5

    out = model.export(tmp_path / "exported")
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        assert (hf_model(**inputs).logits - expected).abs().max().item() < 1e-4


def test_targets_matching_nothing_fail_in_one_line(tiny_bert: Path, tmp_path: Path, capsys: Any) -> None:
    import yaml

    recipe = tmp_path / "lora.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(tiny_bert, tmp_path, {"target_modules": ["q_proj", "v_proj"]})))
    assert_one_line_error(main(["run", str(recipe)]), capsys.readouterr(),
                          ["peft.target_modules: ['q_proj', 'v_proj'] match no Linear layer", "attention.query"])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_lora_run_refuses_a_base_folder_that_changed(tiny_bert: Path, tmp_path: Path) -> None:
    import shutil

    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    result = nlpkit.run(_recipe(base, tmp_path, {"r": 2}))
    texts = [r["text"] for r in tiny_classification_rows(2, 5)]
    expected = nlpkit.load(result.run_dir).predict(texts)
    shutil.copy(base / "model.safetensors", tmp_path / "kept.safetensors")
    weights = load_file(base / "model.safetensors")
    # Another checkpoint of the family in its place: here one more tensor (the fingerprint reads headers, not values).
    save_file(weights | {"pooler.extra": torch.zeros(1)}, base / "model.safetensors")
    with pytest.raises(nlpkit.NlpkitError, match="its adapters were trained on another checkpoint than the one now in"):
        nlpkit.load(result.run_dir)
    shutil.copy(tmp_path / "kept.safetensors", base / "model.safetensors")  # the same checkpoint: it loads again
    assert nlpkit.load(result.run_dir).predict(texts) == expected


def test_adapters_train_with_bf16_gradient_checkpointing_and_token_batches(tiny_bert: Path, tmp_path: Path) -> None:
    recipe = _recipe(tiny_bert, tmp_path, {"r": 4, "use_dora": True, "target_modules": ["all-linear"]})
    recipe["backbone"]["gradient_checkpointing"] = True
    recipe["training"].update(precision="bf16-mixed", max_tokens=64, batch_size=4)
    result = nlpkit.run(recipe)
    weights = load_file(result.run_dir / "model.safetensors")
    magnitudes = [name for name in weights if "lora_magnitude_vector" in name]
    assert len(magnitudes) == 2 * 6  # DoRA on the 6 Linear layers of each of the 2 layers
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())
    assert any(weights[name].abs().max() > 0 for name in weights if "lora_B" in name)  # lora_B starts at zero
