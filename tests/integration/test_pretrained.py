"""Fine-tuning a pretrained Hugging Face-format folder, and exporting the result back to transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import nlpkit
from nlpkit import NlpkitError
from nlpkit.backbones.checkpoints import checkpoint_config
from nlpkit.plugins import load_plugins
from nlpkit.recipe import load_recipe
from nlpkit.tokenization import Tokenizer
from nlpkit.assembly import build_model
from tests.helpers import save_tiny_bert, sentiment_rows, tiny_recipe, write_csv

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A random BERT with a pooler, saved by transformers with a WordPiece tokenizer beside it."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    texts = [row["text"] for row in sentiment_rows(400, 7)]
    tokenizer = Tokenizer.train(texts, "wordpiece", vocab_size=200, min_frequency=1, max_length=64)
    return save_tiny_bert(folder, tokenizer)


def pretrained_recipe(tmp_path: Path, folder: Path, **sections) -> dict:
    data = {"train": str(write_csv(tmp_path / "train.csv", sentiment_rows(240, 1))),
            "validation": str(write_csv(tmp_path / "dev.csv", sentiment_rows(60, 2)))}
    recipe = tiny_recipe(tmp_path, data=data, **sections)
    recipe["backbone"] = {"pretrained": str(folder)}
    recipe["tokenizer"] = {"max_length": 32}
    return recipe


def test_task_head_starts_from_the_checkpoints_pooler(tiny_bert, tmp_path):
    plugin_set = load_plugins()
    recipe = load_recipe(pretrained_recipe(tmp_path, tiny_bert), registries=plugin_set.registries)
    task = plugin_set.registries.tasks.get("classification")(recipe.task_options, Tokenizer.load(tiny_bert))
    task.labels = ["neg", "pos"]
    config = checkpoint_config(tiny_bert).config
    model, source = build_model(recipe, plugin_set.registries, task, config)
    reference = transformers.BertModel.from_pretrained(tiny_bert)
    assert torch.equal(model.head[0].weight, reference.pooler.dense.weight)
    assert torch.equal(model.head[0].bias, reference.pooler.dense.bias)
    assert source["family"] == "bert" and source["config"]["hidden_size"] == 32


def test_fine_tune_then_export_loads_in_transformers_with_the_same_logits(tiny_bert, tmp_path):
    result = nlpkit.run(pretrained_recipe(tmp_path, tiny_bert, training={"epochs": 2}))
    assert result.metrics["val_accuracy"] >= 0.7
    assert json.loads((result.run_dir / "source_checkpoint.json").read_text())["family"] == "bert"

    model = nlpkit.load(result.run_dir)
    out = model.export(tmp_path / "exported")
    texts = ["a great lovely film", "the dreadful grim plot of the story", "a day"]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    hf_model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(hf_model).__name__ == "BertForSequenceClassification"
    assert hf_model.config.id2label == {0: "neg", 1: "pos"}

    encoded = hf_tokenizer(texts, padding=True, return_tensors="pt")
    batch = model.task.collate(model.features({"text": texts}))
    assert torch.equal(batch["input_ids"], encoded["input_ids"])
    with torch.no_grad():
        ours = model.task.forward(model.model, batch)
        theirs = hf_model(**encoded).logits
    assert (ours - theirs).abs().max().item() < 1e-4


def test_export_needs_an_expressible_backbone_and_head(sentiment_recipe, tiny_bert, tmp_path):
    scratch = nlpkit.run(sentiment_recipe, ["training.epochs=1"])
    with pytest.raises(NlpkitError, match="no checkpoint family can express"):
        nlpkit.load(scratch.run_dir).export(tmp_path / "out")
    mean = nlpkit.run(pretrained_recipe(tmp_path, tiny_bert, classification={"pooling": "mean"}, training={"epochs": 1}))
    with pytest.raises(NlpkitError, match="no transformers head for bert"):
        nlpkit.load(mean.run_dir).export(tmp_path / "out2")


def test_pretrained_recipe_errors(tiny_bert, tmp_path):
    recipe = pretrained_recipe(tmp_path, tiny_bert)
    with pytest.raises(NlpkitError, match=r"backbone.pretrained: .*nowhere"):
        load_recipe(recipe, [f"backbone.pretrained={tmp_path / 'nowhere'}"])
    with pytest.raises(NlpkitError, match=r"backbone.pretrained: .*Hub id.*never downloads"):
        load_recipe(recipe, ["backbone.pretrained=google-bert/bert-base-uncased"])
    with pytest.raises(NlpkitError, match=r"tokenizer.train: a pretrained backbone needs its own tokenizer"):
        load_recipe(recipe, ["tokenizer.train=bpe"])
    with pytest.raises(NlpkitError, match=r"backbone.preset: cannot be combined with backbone.pretrained"):
        load_recipe(recipe, ["backbone.preset=encoder-tiny"])
    with pytest.raises(NlpkitError, match=r"backbone.freeze_layers: 5 is more than the backbone's 2 layers"):
        load_recipe(recipe, ["backbone.freeze_layers=5"])


MINILM = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "all-minilm-l6-v2"


@pytest.mark.skipif(not MINILM.is_dir(), reason="needs ../shared/models/all-minilm-l6-v2")
def test_embed_follows_the_sentence_transformers_modules_of_minilm():
    texts = ["A man is playing a guitar.", "Ein Mann spielt Gitarre — 🎸", "The weather is lovely today in Zürich",
             "naïve café prices rose 12% in 2024"]
    model = nlpkit.load(MINILM)
    ours = model.embed(texts)
    single = model.embed(texts[0])
    # sentence-transformers' pipeline for this folder: BertModel, mean over real tokens, L2 normalisation.
    tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
    reference_model = transformers.AutoModel.from_pretrained(MINILM).eval()
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = reference_model(**encoded).last_hidden_state
    mask = encoded["attention_mask"][..., None].float()
    reference = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert ours.shape == (4, 384) and single.shape == (384,)
    assert (ours - reference).abs().max().item() < 1e-5
    assert torch.allclose(single, ours[0], atol=1e-6)
    assert torch.allclose(ours.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_embed_pools_as_the_folder_says(tiny_bert, tmp_path):
    import shutil

    folder = tmp_path / "st"
    shutil.copytree(tiny_bert, folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    cls_model = nlpkit.load(folder)
    plain = nlpkit.load(tiny_bert)  # no modules.json: mean pooling, unnormalised
    text = "a great lovely film"
    ids = torch.tensor([cls_model.tokenizer.encode_batch([text])[0].ids])
    with torch.no_grad():
        hidden = cls_model.backbone(ids).last_hidden_state[0]
    assert torch.allclose(cls_model.embed(text), hidden[0], atol=1e-6)
    assert torch.allclose(plain.embed(text), hidden.mean(0), atol=1e-6)

    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True}))
    with pytest.raises(NlpkitError, match="exactly one of"):
        nlpkit.load(folder)
