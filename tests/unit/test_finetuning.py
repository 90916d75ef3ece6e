"""Fine-tuning controls: which parameters train, and at which learning rate."""

from __future__ import annotations

import dataclasses
import json

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file
from torch import nn

import nlpkit
from nlpkit import NlpkitError
from nlpkit.backbones import PRESETS, BackboneConfig, build_backbone
from nlpkit.plugins import load_plugins
from nlpkit.recipe import load_recipe
from nlpkit.tasks import TaskModel
from nlpkit.finetuning import freeze, layer_depths, parameter_groups
from nlpkit.assembly import build_model


def tiny(kind: str) -> nn.Module:
    config = dataclasses.replace(PRESETS[f"{kind}-tiny"](), vocab_size=50, hidden_size=32, num_heads=2,
                                 intermediate_size=64, num_layers=3)
    return build_backbone(config)


@pytest.mark.parametrize("kind", ["encoder", "decoder", "encoder-decoder"])
def test_freezing_embeddings_layers_or_everything(kind):
    backbone = tiny(kind)
    freeze(backbone, embeddings=True)
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen and all("embedding" in n for n in frozen)

    backbone = tiny(kind)
    freeze(backbone, layers=2)
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert any(".0." in n for n in frozen) and any(".1." in n for n in frozen)
    assert not any("layers.2." in n and not n.startswith("decoder.") for n in frozen)
    assert not any(n.startswith("decoder.") for n in frozen)  # only the encoder's first layers

    backbone = tiny(kind)
    assert freeze(backbone, whole=True) == sum(p.numel() for p in backbone.parameters())


def test_freezing_more_layers_than_exist_is_an_error():
    with pytest.raises(NlpkitError, match="freeze_layers: 9 is more than the backbone's 3 layers"):
        freeze(tiny("encoder"), layers=9)


def test_layer_lr_decay_lowers_the_rate_towards_the_embeddings():
    model = TaskModel(tiny("encoder"), nn.Linear(32, 2))
    groups = parameter_groups(model, lr=1.0, weight_decay=0.1, layer_lr_decay=0.5)
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    depths = layer_depths(model.backbone)
    top = max(depths.values())
    assert rate[id(named["head.weight"])] == 1.0
    for name, depth in depths.items():
        assert rate[id(named[f"backbone.{name}"])] == pytest.approx(0.5 ** (top - depth))
    assert rate[id(named["backbone.embeddings.token.weight"])] < rate[id(named["backbone.layers.0.attention.query.weight"])]
    # Vectors (biases, norms) never get weight decay.
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert all(decay[id(p)] == 0.0 for p in model.parameters() if p.ndim < 2)
    assert all(decay[id(p)] == 0.1 for p in model.parameters() if p.ndim >= 2)


def test_frozen_parameters_do_not_change_in_training(sentiment_recipe):
    controls = ["backbone.config.num_layers=2", "backbone.freeze_embeddings=true", "backbone.freeze_layers=1"]
    result = nlpkit.run(sentiment_recipe, [*controls, "training.epochs=1", "optimization.layer_lr_decay=0.8"])
    trained = load_file(result.run_dir / "model.safetensors")
    # Rebuild the initial weights: same seed, same construction order as the run.
    plugin_set = load_plugins()
    recipe = load_recipe(sentiment_recipe, controls, plugin_set.registries)
    task = nlpkit.load(result.run_dir).task
    config = BackboneConfig.from_dict(json.loads((result.run_dir / "backbone.json").read_text()))
    pl.seed_everything(recipe.training.seed, verbose=False)
    initial = build_model(recipe, plugin_set.registries, task, config)[0].state_dict()
    for name, tensor in trained.items():
        if name.startswith("backbone.embeddings.") or name.startswith("backbone.layers.0."):
            assert torch.equal(tensor, initial[name]), name
    assert not torch.equal(trained["backbone.layers.1.attention.query.weight"], initial["backbone.layers.1.attention.query.weight"])


@pytest.mark.parametrize("kind", ["encoder", "decoder", "encoder-decoder"])
def test_gradient_checkpointing_gives_the_same_gradients(kind):
    from nlpkit.finetuning import checkpoint_layers

    torch.manual_seed(0)
    plain = tiny(kind)
    checkpointed = tiny(kind)
    checkpointed.load_state_dict(plain.state_dict())
    expected_layers = 3 if kind != "encoder-decoder" else 6
    assert checkpoint_layers(checkpointed) == expected_layers
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    extra = {"decoder_input_ids": ids[:, :4]} if kind == "encoder-decoder" else {}
    grads = []
    for model in (plain, checkpointed):
        model.train()
        torch.manual_seed(1)  # the same dropout masks on both sides
        model(ids, attention_mask=mask, **extra).last_hidden_state.pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
    assert list(dict(checkpointed.named_parameters())) == list(dict(plain.named_parameters()))


def test_gradient_checkpointing_from_the_recipe(sentiment_recipe):
    result = nlpkit.run(sentiment_recipe, ["backbone.gradient_checkpointing=true", "training.epochs=2"])
    assert result.metrics["val_accuracy"] >= 0.8


@pytest.mark.slow
def test_compiled_layers_give_the_same_outputs_and_gradients():
    from nlpkit.finetuning import compile_layers

    torch.manual_seed(0)
    config = dataclasses.replace(PRESETS["decoder-tiny"](), vocab_size=50, hidden_size=32, num_heads=2,
                                 intermediate_size=64, num_layers=3, dropout=0.0, attention_dropout=0.0)
    eager, compiled = build_backbone(config).train(), build_backbone(config).train()
    compiled.load_state_dict(eager.state_dict())
    assert compile_layers(compiled) == 3
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    results = []
    for model in (eager, compiled):
        out = model(ids, attention_mask=mask).last_hidden_state
        out.pow(2).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    for name, grad in results[0][1].items():  # float32 rounding, in another order of sums
        assert (results[1][1][name] - grad).abs().max() <= 1e-5 * grad.abs().max(), name
    # Names stay those of the eager model: checkpoints and exports cannot tell the difference.
    assert list(compiled.state_dict()) == list(eager.state_dict())
    # Evaluation and decoding run the layers eagerly: the same numbers as the uncompiled model, bit for bit,
    # and no compilation for each new cache length.
    from torch._dynamo.utils import counters  # torch's own tests read these

    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1  # the training pass compiled
    eager.eval(), compiled.eval()
    with torch.no_grad():
        assert torch.equal(compiled(ids, attention_mask=mask).last_hidden_state,
                           eager(ids, attention_mask=mask).last_hidden_state)
        cache = compiled(ids[:, :4], use_cache=True).past_key_values
        for i in range(4, 7):
            compiled(ids[:, i : i + 1], past_key_values=cache, use_cache=True)
    assert cache.length == 7 and counters["stats"]["unique_graphs"] == graphs


@pytest.mark.slow
def test_training_compile_from_the_recipe_reports_the_compile_time(sentiment_recipe, caplog):
    with caplog.at_level("INFO", logger="nlpkit"):
        result = nlpkit.run(sentiment_recipe, ["training.compile=true", "training.epochs=2"])
    assert result.metrics["val_accuracy"] >= 0.8
    assert any(r.getMessage().startswith("training.compile: about ") for r in caplog.records)
    loaded = nlpkit.load(result.run_dir)  # the run's weights under their usual names
    assert len(loaded.predict([{"text": "a fine film"}])) == 1


def test_training_compile_without_a_cpu_compiler_is_a_one_line_error(monkeypatch):
    import torch._inductor.config as inductor_config

    from nlpkit.finetuning import compile_layers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, "/nonexistent/g++"))
    with pytest.raises(NlpkitError, match=r"^training\.compile: torch\.compile needs a working C\+\+ compiler") as caught:
        compile_layers(tiny("decoder"))
    assert "\n" not in str(caught.value)
