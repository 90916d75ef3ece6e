"""Training options from the recipe reach Lightning and change what happens."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file

import nlpkit
from nlpkit.training.module import schedule_factor


def history(run_dir):
    with (run_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedules_warm_up_then_follow_their_shape(schedule):
    factors = [schedule_factor(step, total=100, warmup=10, schedule=schedule) for step in range(100)]
    assert factors[0] < factors[5] < factors[9] <= 1.0  # linear warm-up
    assert max(factors) == pytest.approx(1.0, abs=0.1)
    if schedule == "constant":
        assert factors[-1] == 1.0
    else:
        assert factors[-1] < 0.05 and all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_same_seed_same_weights(sentiment_recipe):
    sentiment_recipe["tokenizer"]["train"] = "bpe"  # deterministic training (WordPiece's is not upstream)
    first = nlpkit.run(sentiment_recipe, ["training.epochs=1"])
    second = nlpkit.run(sentiment_recipe, ["training.epochs=1"])
    a, b = load_file(first.run_dir / "model.safetensors"), load_file(second.run_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert first.metrics == second.metrics


def test_early_stopping_ends_training_before_the_last_epoch(sentiment_recipe):
    # A min_delta no change can reach: the first validation is the best, patience 1 stops at the second.
    result = nlpkit.run(sentiment_recipe, ["training.epochs=10", "training.early_stopping.patience=1",
                                           "training.early_stopping.min_delta=100"])
    trained_epochs = {row["epoch"] for row in history(result.run_dir) if row.get("train_loss_epoch")}
    assert len(trained_epochs) == 2


def test_best_checkpoint_is_the_one_reported(sentiment_recipe):
    result = nlpkit.run(sentiment_recipe, ["training.epochs=4", "training.monitor=val_accuracy"])
    val_rows = [row for row in history(result.run_dir) if row.get("val_accuracy")]
    best = max(float(row["val_accuracy"]) for row in val_rows)
    assert result.metrics["val_accuracy"] == pytest.approx(best, abs=1e-6)


def test_accumulation_and_max_steps_count_optimizer_steps(sentiment_recipe):
    # 240 examples / batch 16 = 15 batches an epoch; accumulating 5 gives 3 optimizer steps an epoch.
    result = nlpkit.run(sentiment_recipe, ["training.epochs=2", "optimization.accumulate_grad_batches=5"])
    steps = max(int(row["step"]) for row in history(result.run_dir))
    assert steps in (5, 6)  # the last logged step of 6 optimizer steps (0-based logging)


def test_bf16_mixed_precision_trains_on_cpu(sentiment_recipe):
    result = nlpkit.run(sentiment_recipe, ["training.precision=bf16-mixed", "training.epochs=2"])
    assert result.metrics["val_accuracy"] >= 0.8
    weights = load_file(result.run_dir / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in weights.values())  # mixed precision keeps fp32 weights


def test_trainer_section_passes_through_to_lightning(sentiment_recipe):
    result = nlpkit.run(sentiment_recipe, ["trainer.limit_train_batches=2", "training.epochs=1"])
    steps = {int(row["step"]) for row in history(result.run_dir)}
    assert max(steps) <= 2


def test_length_grouped_batches_train(sentiment_recipe):
    result = nlpkit.run(sentiment_recipe, ["data.group_by_length=true", "training.epochs=5"])
    assert result.metrics["val_accuracy"] >= 0.8


def test_gradients_are_clipped_under_bf16_mixed_precision(sentiment_recipe, monkeypatch):
    calls = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return original(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    nlpkit.run(sentiment_recipe, ["training.precision=bf16-mixed", "training.epochs=1", "optimization.grad_clip=0.5"])
    assert calls and all(value == 0.5 for value in calls)


@pytest.mark.parametrize(
    "cpu_bf16, accelerator, expected",
    [(True, "auto", "bf16-mixed"), (False, "auto", "32-true"), (True, "cpu", "bf16-mixed"), (True, "mps", "32-true")],
)
def test_auto_precision_is_bf16_mixed_only_where_the_cpu_multiplies_bf16(monkeypatch, cpu_bf16, accelerator, expected):
    from nlpkit.training import trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(trainer, "_cpu_multiplies_bf16", lambda: cpu_bf16)
    assert trainer.resolve_precision("auto", accelerator) == expected
    assert trainer.resolve_precision("16-mixed", accelerator) == "16-mixed"  # an explicit choice stays


def test_auto_precision_is_recorded_and_kept_on_resume(sentiment_recipe, monkeypatch):
    import yaml

    from nlpkit.training import trainer

    del sentiment_recipe["training"]["precision"]  # the default, auto
    monkeypatch.setattr(trainer, "_cpu_multiplies_bf16", lambda: True)
    result = nlpkit.run(sentiment_recipe, ["training.epochs=1", "training.checkpoint_every_n_steps=5"])
    recorded = yaml.safe_load((result.run_dir / "recipe.yaml").read_text())["training"]["precision"]
    assert recorded == "bf16-mixed"
    # Resumed on a machine without bf16, the run keeps training as it started.
    monkeypatch.setattr(trainer, "_cpu_multiplies_bf16", lambda: False)
    nlpkit.run(sentiment_recipe, ["training.epochs=2", "training.checkpoint_every_n_steps=5"], resume=result.run_dir)
    assert yaml.safe_load((result.run_dir / "recipe.yaml").read_text())["training"]["precision"] == "bf16-mixed"


def test_token_budget_batches_train_within_their_budget(sentiment_recipe, monkeypatch):
    from nlpkit_classification import Classification

    shapes = []
    collate = Classification.collate

    def spy(self, features):
        batch = collate(self, features)
        shapes.append(tuple(batch["input_ids"].shape))
        return batch

    monkeypatch.setattr(Classification, "collate", spy)
    # eval_batch_size 2 keeps validation batches (2 x at most 32 tokens) within the same budget.
    result = nlpkit.run(sentiment_recipe, ["training.max_tokens=96", "training.eval_batch_size=2", "training.epochs=5"])
    assert all(rows * length <= 96 for rows, length in shapes)
    assert len({rows for rows, _ in shapes}) > 2  # sizes vary with the lengths of the sentences
    assert result.metrics["val_accuracy"] >= 0.8


def test_average_checkpoints_makes_the_run_model_the_mean_of_the_last_epochs(sentiment_recipe):
    result = nlpkit.run(sentiment_recipe, ["training.epochs=4", "training.average_checkpoints=3"])
    kept = sorted((result.run_dir / "checkpoints").glob("epoch-*.ckpt"))
    assert [p.name for p in kept] == ["epoch-001.ckpt", "epoch-002.ckpt", "epoch-003.ckpt"]
    states = [torch.load(p, weights_only=False)["state_dict"] for p in kept]
    saved = load_file(result.run_dir / "model.safetensors")
    for name, tensor in saved.items():
        mean = sum(state[f"model.{name}"] for state in states) / 3
        assert torch.allclose(tensor, mean, atol=1e-6), name
    # The reported metrics are the averaged model's.
    evaluated = nlpkit.load(result.run_dir).evaluate(sentiment_recipe["data"]["validation"])
    assert evaluated["accuracy"] == pytest.approx(result.metrics["val_accuracy"], abs=1e-6)
