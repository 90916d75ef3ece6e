"""`nlpkit export RUN OUT --adapter`: a LoRA run as a PEFT adapter folder that peft loads onto transformers.

Each tiny random checkpoint (the family tests' configs and data) is
fine-tuned for two steps with adapters, exported with `--adapter`, and the
folder is loaded as peft loads any adapter:
`PeftModel.from_pretrained(AutoModelFor...(base), OUT)`. Its logits equal
the run's (which nlpkit merged at load), and a decoder's greedy tokens are
the run's. Layers that `transformers` fuses (GPT-2's `c_attn`, Phi-3's
`gate_up_proj`) have no PEFT form: `--adapter` is refused in one line that
points to `--merge`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

import nlpkit
from nlpkit.cli import main
from nlpkit.testing import tiny_classification_data, tiny_recipe, tiny_tokenizer, write_rows
from tests.helpers import assert_one_line_error, seq2seq_logit_gap, translation_batch
from tests.plugins import test_encoder_family_heads as encoders
from tests.plugins import test_generation_families as decoders
from tests.plugins import test_translation_families as seq2seq

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

# family, task, peft section: DoRA on BERT's pooler-headed classifier, rsLoRA on chosen layers, plain LoRA.
ENCODER_CASES = [
    ("bert", "classification", {"r": 4, "alpha": 8, "use_dora": True, "target_modules": ["query", "value", "mlp"]}),
    ("roberta", "ner", {"r": 2, "use_rslora": True, "target_modules": ["all-linear"], "layers": [1]}),
    ("deberta-v2", "qa", {"r": 4, "target_modules": ["query", "key", "value", "attention_output"]}),
]


def _export_adapter(run_dir: Path, out: Path, capsys: Any) -> Path:
    capsys.readouterr()
    assert main(["export", str(run_dir), str(out), "--adapter"]) == 0
    assert capsys.readouterr().out.strip() == f"exported to {out}"
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("family", "task", "section"), ENCODER_CASES, ids=[c[0] for c in ENCODER_CASES])
def test_an_encoder_adapter_loads_in_peft_with_the_run_logits(family: str, task: str, section: dict[str, Any],
                                                               tmp_path: Path, capsys: Any) -> None:
    data, texts, options = encoders._task_data(task, tmp_path / "data")
    tokenizer = tiny_tokenizer(texts, kind="wordpiece", vocab_size=200, max_length=64)
    base = tmp_path / "pretrained"
    encoders._pretrained(family, tokenizer, base)
    recipe = tiny_recipe(task, data, tmp_path / "runs", options=options)
    recipe.update(backbone={"pretrained": str(base)}, tokenizer={"max_length": 64}, peft=section)
    run_dir = nlpkit.run(recipe).run_dir
    model = nlpkit.load(run_dir)

    out = _export_adapter(run_dir, tmp_path / "adapter", capsys)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(base)
    assert (config["r"], config["use_dora"], config["use_rslora"]) == (
        section["r"], section.get("use_dora", False), section.get("use_rslora", False))
    saved = load_file(out / "adapter_model.safetensors")
    assert all(name.startswith("base_model.model.") for name in saved)
    if "layers" in section:  # only layer 1 has adapters
        assert all(".layer.1." in name for name in saved if "lora_" in name)

    # The merged export says how many labels the head class needs; the adapter goes onto the plain base.
    merged = transformers.AutoConfig.from_pretrained(model.export(tmp_path / "merged"))
    head_class = getattr(transformers, encoders.HEADS[task])
    labels = {"id2label": merged.id2label, "label2id": merged.label2id, "ignore_mismatched_sizes": True}
    adapted = peft.PeftModel.from_pretrained(head_class.from_pretrained(base, **labels), out).eval()
    # peft adapts the model in place; its own forward hides token_type_ids in **kwargs from _logits' signature check.
    ours, theirs = encoders._logits(task, model, adapted.get_base_model(), tmp_path)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-4
    # Without the adapter folder's tensors the base alone answers otherwise.
    _, bare = encoders._logits(task, model, head_class.from_pretrained(base, **labels).eval(), tmp_path)
    assert (bare - theirs).abs().max().item() > 1e-3


@pytest.mark.slow
def test_a_decoder_adapter_loads_in_peft_with_the_run_logits_and_greedy_tokens(tmp_path: Path, capsys: Any) -> None:
    tokenizer = tiny_tokenizer(decoders.TEXTS, vocab_size=300, max_length=32)
    base = tmp_path / "pretrained"
    decoders._pretrained("llama", tokenizer, base)
    train = write_rows(tmp_path / "train.jsonl", [{"text": text} for text in decoders.TEXTS])
    recipe = tiny_recipe("generation", {"train": str(train), "validation": str(train), "format": "jsonl"},
                         tmp_path / "runs", "decoder", options={"block_size": 16})
    recipe.update(backbone={"pretrained": str(base)}, tokenizer={"max_length": 32},
                  peft={"r": 4, "alpha": 16, "target_modules": ["all-linear"]})
    recipe["optimization"]["lr"] = 0.05  # two steps that move the greedy tokens
    run_dir = nlpkit.run(recipe).run_dir
    model = nlpkit.load(run_dir)

    out = _export_adapter(run_dir, tmp_path / "adapter", capsys)
    assert json.loads((out / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    adapted = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base), out).eval()
    ids = torch.tensor([model.task.encode_prompts(["the cat sat on a mat and the dog"])[0]])
    backbone = model.model.backbone
    with torch.no_grad():
        ours = backbone.logits(backbone(ids).last_hidden_state)
        assert (ours - adapted(input_ids=ids).logits).abs().max().item() <= 1e-4
        generated = adapted.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                                     min_new_tokens=8, do_sample=False)
    text = model.generate("the cat sat on a mat and the dog", max_new_tokens=8, min_new_tokens=8)
    assert model.task.tokenizer.decode(generated[0, ids.shape[1]:].tolist()) == text


@pytest.mark.slow
def test_an_encoder_decoder_adapter_loads_in_peft_with_the_run_logits(tmp_path: Path, capsys: Any) -> None:
    rows = seq2seq._pairs(40, 1)
    tokenizer = tiny_tokenizer([s for pair in rows for s in pair], vocab_size=300, max_length=32)
    base = tmp_path / "pretrained"
    seq2seq._pretrained_mt5(tokenizer, base)
    data = {"format": "parallel", "train": seq2seq._parallel(tmp_path, "train", rows),
            "validation": seq2seq._parallel(tmp_path, "val", seq2seq._pairs(8, 2)), "options": {"target": "de"}}
    recipe = tiny_recipe("translation", data, tmp_path / "runs", "encoder-decoder", options={"max_new_tokens": 8})
    recipe.update(backbone={"pretrained": str(base)}, tokenizer={"max_length": 32},
                  peft={"r": 4, "target_modules": ["query", "value", "attention_output"]})
    run_dir = nlpkit.run(recipe).run_dir
    model = nlpkit.load(run_dir)

    out = _export_adapter(run_dir, tmp_path / "adapter", capsys)
    saved = load_file(out / "adapter_model.safetensors")
    assert any(".EncDecAttention." in name for name in saved)  # cross-attention counts as attention
    adapted = peft.PeftModel.from_pretrained(transformers.AutoModelForSeq2SeqLM.from_pretrained(base), out).eval()
    batch = translation_batch(model, ["the big dog", "a cat sees the red tree"],
                              ["der gross hund", "ein katze sieht der rot baum"])
    assert seq2seq_logit_gap(model, adapted, batch) <= 1e-4


@pytest.mark.parametrize(("family", "target", "layer"), [("gpt2", "query", "layers.0.attention.query"),
                                                          ("phi3", "mlp", "layers.0.mlp.gate")])
def test_adapters_on_layers_transformers_fuses_are_refused_with_a_pointer_to_merge(
        family: str, target: str, layer: str, tmp_path: Path, capsys: Any) -> None:
    tokenizer = tiny_tokenizer(decoders.TEXTS, vocab_size=300, max_length=32)
    base = tmp_path / "pretrained"
    decoders._pretrained(family, tokenizer, base)
    train = write_rows(tmp_path / "train.jsonl", [{"text": text} for text in decoders.TEXTS])
    recipe = tiny_recipe("generation", {"train": str(train), "validation": str(train), "format": "jsonl"},
                         tmp_path / "runs", "decoder", options={"block_size": 16})
    recipe.update(backbone={"pretrained": str(base)}, tokenizer={"max_length": 32}, peft={"target_modules": [target]})
    run_dir = nlpkit.run(recipe).run_dir
    capsys.readouterr()
    assert_one_line_error(main(["export", str(run_dir), str(tmp_path / "adapter"), "--adapter"]), capsys.readouterr(),
                          [f"--adapter: {family} checkpoints fuse nlpkit's {layer} with other layers", "--merge"])
    assert not (tmp_path / "adapter").exists()
    assert main(["export", str(run_dir), str(tmp_path / "merged"), "--merge"]) == 0
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged") is not None


def test_adapter_export_of_a_run_without_adapters_is_refused(tmp_path: Path, capsys: Any) -> None:
    recipe_file = tmp_path / "plain.yaml"
    recipe_file.write_text(yaml.safe_dump(tiny_recipe("classification", tiny_classification_data(tmp_path / "data"),
                                                      tmp_path / "runs")))
    assert main(["run", str(recipe_file)]) == 0
    [run_dir] = (tmp_path / "runs").iterdir()
    capsys.readouterr()
    assert_one_line_error(main(["export", str(run_dir), str(tmp_path / "out"), "--adapter"]), capsys.readouterr(),
                          ["--adapter:", "is not a LoRA run", "--merge"])
    assert main(["export", str(run_dir), str(tmp_path / "out"), "--adapter", "--merge"]) == 2
