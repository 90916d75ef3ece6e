"""Token-level losses are averaged over the target tokens of the whole optimizer step (issue 18, point 5).

Accumulating 4 batches of 2 gives the gradient of one batch of 8, and so
would 2 processes of 4: every target token of a step weighs alike, whatever
the batch size, ``accumulate_grad_batches`` or number of devices.
"""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch

from nlpkit.assembly import build_model, prepare_inputs
from nlpkit.plugins import load_plugins
from nlpkit.recipe import OptimizationSection, load_recipe
from nlpkit.tasks import Task, TaskModel
from nlpkit.testing import tiny_recipe, write_rows
from nlpkit.training.datamodule import STEP_TARGET_TOKENS, StepTokensLoader, TaskDataModule
from nlpkit.training.module import TaskModule

WORDS = "the cat sat on a mat and the dog ran to the big red house by the sea".split()


def _words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def _data(task: str, folder: Path) -> dict[str, Any]:
    """Training rows whose targets differ much in length: batches hold different numbers of target tokens."""
    rng = random.Random(0)
    if task == "generation":
        rows = [{"text": _words(rng, 2, 4), "completion": _words(rng, 1, 14)} for _ in range(16)]
    elif task == "translation":
        rows = [{"source": _words(rng, 2, 5), "target": _words(rng, 1, 14)} for _ in range(16)]
    else:
        rows = []
        for _ in range(16):
            tokens = _words(rng, 1, 12).split()
            rows.append({"tokens": tokens, "tags": [rng.choice(["O", "B-LOC", "B-PER"]) for _ in tokens]})
    train = write_rows(folder / "train.jsonl", rows)
    return {"train": str(train), "validation": str(train)}


class _Gradients(pl.Callback):
    """Keeps every parameter's gradient at the first optimizer step (after the backward, before clipping)."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self.grads:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def _fit(task_name: str, folder: Path, batch_size: int, accumulate: int, callbacks: list[pl.Callback],
         ckpt_path: Path | None = None, **limits: Any) -> TaskModule:
    """Train a tiny model of the task on `folder`'s rows with Lightning (no validation), from the same weights."""
    folder.mkdir(exist_ok=True)
    kind = {"generation": "decoder", "translation": "encoder-decoder", "ner": "encoder"}[task_name]
    raw = tiny_recipe(task_name, _data(task_name, folder), folder / "runs", kind,
                      options={"dropout": 0.0} if task_name == "ner" else None)
    plugin_set = load_plugins()
    recipe = load_recipe(raw, [f"training.batch_size={batch_size}"], plugin_set.registries)
    inputs = prepare_inputs(recipe, plugin_set.registries)  # byte-level BPE: the same tokenizer every time
    torch.manual_seed(0)  # the same initial weights in every run
    model, _ = build_model(recipe, plugin_set.registries, inputs.task, inputs.backbone_config)
    trainer = pl.Trainer(accelerator="cpu", devices=1, accumulate_grad_batches=accumulate, precision="32-true",
                         gradient_clip_val=None, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                         default_root_dir=folder, **limits)
    module = TaskModule(inputs.task, model, recipe.optimization)
    trainer.fit(module, datamodule=TaskDataModule(inputs.task, inputs.splits, recipe.training), ckpt_path=ckpt_path)
    return module


def _first_step_gradients(task_name: str, folder: Path, batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
    gradients = _Gradients()
    # EpochSampler's order depends on the seed and the epoch alone: both runs' first step sees the same 8 rows.
    _fit(task_name, folder, batch_size, accumulate, [gradients], max_steps=1)
    assert gradients.grads
    return gradients.grads


def _largest_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[name] - b[name]).abs().max()) for name in a)


@pytest.mark.parametrize("task_name", ["generation", "translation", "ner"])
def test_accumulating_4_batches_of_2_gives_the_gradients_of_one_batch_of_8(task_name, tmp_path, monkeypatch):
    whole = _first_step_gradients(task_name, tmp_path / "b8", batch_size=8, accumulate=1)
    accumulated = _first_step_gradients(task_name, tmp_path / "b2x4", batch_size=2, accumulate=4)
    assert whole.keys() == accumulated.keys()
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], atol=1e-6, rtol=0, msg=name)

    # Without the normalisation (the task counts no target tokens) each batch's mean weighs alike: the
    # mean of the 4 batch means is another gradient, so the comparison above can fail.
    monkeypatch.setattr(load_plugins().registries.tasks.get(task_name), "target_tokens", lambda self, batch: None)
    naive = _first_step_gradients(task_name, tmp_path / "naive", batch_size=2, accumulate=4)
    assert _largest_gap(naive, whole) > 1e-4


class _Steps(pl.Callback):
    """Records the counts each training batch carries; saves a checkpoint after optimizer step `save_at`."""

    def __init__(self, path: Path, save_at: int = 0) -> None:
        self.path, self.save_at = path, save_at
        self.counts: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self.counts.append(batch[STEP_TARGET_TOKENS])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self.save_at and not self.path.exists():  # as LatestCheckpoint saves
            trainer.save_checkpoint(self.path)


def test_a_run_resumed_mid_epoch_counts_the_steps_of_the_uninterrupted_run(tmp_path):
    # 16 rows in batches of 2: 8 batches an epoch, in steps of 3, 3 and 2; saved after the first step.
    full = _Steps(tmp_path / "step-1.ckpt", save_at=1)
    whole = _fit("generation", tmp_path / "full", 2, 3, [full], max_epochs=2)
    resumed_steps = _Steps(tmp_path / "unused.ckpt", save_at=-1)
    resumed = _fit("generation", tmp_path / "resumed", 2, 3, [resumed_steps], ckpt_path=full.path, max_epochs=2)
    assert len(full.counts) == 16 and [step for _, step in full.counts[:3]] == [sum(n for n, _ in full.counts[:3])] * 3
    assert resumed_steps.counts == full.counts[3:]  # the resumed epoch starts at the second step's first batch
    for name, weight in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], weight), name


# -- the step windows -------------------------------------------------------------------------------------------


class _Resumed(torch.utils.data.Sampler[int]):
    """An epoch of `size` indices whose first `skipped` were trained before a resume (EpochSampler.resume's way)."""

    def __init__(self, size: int, skipped: int) -> None:
        self.size, self.skipped = size, skipped

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Any:
        return iter(range(self.skipped, self.size))


def _windows(batches: int, accumulate: int, skipped: int = 0, limit: int | float = 1.0) -> list[list[int]]:
    """The optimizer steps StepTokensLoader makes of `batches` one-row batches of 1, 2, 3 ... target tokens."""
    sampler = _Resumed(batches, skipped)
    loader = StepTokensLoader(list(range(1, batches + 1)), batch_size=1, sampler=sampler,
                              collate_fn=lambda rows: {"n": rows[0]}, target_tokens=lambda batch: batch["n"],
                              accumulate=accumulate, skipped=lambda: sampler.skipped, limit=limit)
    steps: list[list[int]] = []
    counted: list[int] = []  # each step's count, as its batches carry it
    for batch in loader:
        own, step = batch[STEP_TARGET_TOKENS]
        assert own == batch["n"]
        if not steps or sum(steps[-1]) == counted[-1]:  # the step before is whole: a new one starts
            steps.append([])
            counted.append(step)
        steps[-1].append(batch["n"])
        assert step == counted[-1]
    assert [sum(step) for step in steps] == counted
    return steps


def test_each_batch_carries_the_target_tokens_of_its_optimizer_step():
    # Steps after every 4th batch and at the epoch's last one, which then counts only its own batches.
    assert _windows(10, 4) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    # A run resumed after its first step starts at the second step's first batch.
    assert _windows(10, 4, skipped=4) == [[5, 6, 7, 8], [9, 10]]
    # limit_train_batches=6 ends the epoch, and its last step, at the 6th batch.
    assert _windows(10, 4, limit=6) == [[1, 2, 3, 4], [5, 6]]
    assert _windows(3, 1) == [[1], [2], [3]]


# -- several processes: the arithmetic ----------------------------------------------------------------------------


class _AnyTask(Task):
    """The task a TaskModule needs to be built; the test gives it the losses and counts itself."""

    name = "any"



def test_processes_and_accumulation_give_the_mean_over_all_the_steps_target_tokens():
    """2 processes x 2 accumulated batches: DDP's mean of the processes' sums of loss / accumulate_grad_batches.

    The processes' token counts differ, so a mean of batch means would not be the mean over all tokens.
    The all-reduce is Lightning's strategy.reduce (a sum), faked here by the known total.
    """
    torch.manual_seed(0)
    weight = torch.randn(5, requires_grad=True)
    # Per process, per batch: token features (tokens, 5) and which tokens are targets.
    batches = [[(torch.randn(6, 5), torch.tensor([1, 1, 1, 0, 0, 0])), (torch.randn(6, 5), torch.ones(6))],
               [(torch.randn(6, 5), torch.tensor([1, 0, 0, 0, 0, 0])), (torch.randn(6, 5), torch.tensor([1, 1, 0, 0, 0, 0]))]]
    total = sum(int(mask.sum()) for process in batches for _, mask in process)

    def token_losses(x: torch.Tensor) -> torch.Tensor:
        return (x @ weight).sin() ** 2

    expected = torch.autograd.grad(sum((token_losses(x) * m).sum() for p in batches for x, m in p) / total, weight)[0]

    module = TaskModule(_AnyTask(None, None), TaskModel(torch.nn.Linear(1, 1), torch.nn.Identity()),
                        OptimizationSection())
    reduced = []
    strategy = SimpleNamespace(reduce=lambda count, reduce_op: reduced.append(reduce_op) or torch.tensor(total))
    module.trainer = SimpleNamespace(global_step=0, world_size=2, accumulate_grad_batches=2, strategy=strategy)
    module._step_tokens = None
    gradient = torch.zeros(5)
    for process in batches:
        step_tokens = sum(int(mask.sum()) for _, mask in process)
        module._step_tokens = None  # each process keeps its own
        for x, mask in process:
            mean = (token_losses(x) * mask).sum() / mask.sum()  # what a task's loss returns
            loss = module._step_normalised(mean, int(mask.sum()), step_tokens)
            # Lightning divides by accumulate_grad_batches; DDP averages over the 2 processes.
            gradient += torch.autograd.grad(loss / 2, weight)[0] / 2
    torch.testing.assert_close(gradient, expected, atol=1e-6, rtol=0)
    assert reduced == ["sum", "sum"]  # one all-reduce per process and step, not one per batch


def test_lightning_recreates_the_loader_with_a_distributed_sampler_and_keeps_its_steps():
    # What Lightning does to a training DataLoader under DDP (use_distributed_sampler): a new one of the same
    # class from the arguments it was made with, over this process's shard of the sampler's order.
    from lightning_fabric.utilities.data import _replace_dunder_methods, _update_dataloader
    from lightning_fabric.utilities.distributed import DistributedSamplerWrapper
    from torch.utils.data import DataLoader

    from nlpkit.data import EpochSampler

    sampler = EpochSampler(20, batch_size=2)
    with _replace_dunder_methods(DataLoader, "dataset"):
        loader = StepTokensLoader(list(range(20)), batch_size=2, sampler=sampler, collate_fn=lambda rows: {"n": len(rows)},
                                  target_tokens=lambda batch: batch["n"], accumulate=4, skipped=lambda: sampler.skipped)
    shard = _update_dataloader(loader, DistributedSamplerWrapper(sampler, num_replicas=2, rank=0, shuffle=False))
    assert isinstance(shard, StepTokensLoader) and len(shard) == 5
    # This process's 10 rows: a step of 4 batches of 2, then the epoch's last batch alone.
    assert [batch[STEP_TARGET_TOKENS] for batch in shard] == [(2, 8)] * 4 + [(2, 2)]


@pytest.mark.parametrize("batching", [["training.max_tokens=48"], ["data.group_by_length=true"]])
def test_token_budget_and_length_grouped_batches_count_their_steps(batching, tmp_path, monkeypatch):
    import nlpkit

    seen: list[tuple[int, int]] = []
    normalised = TaskModule._step_normalised

    def spy(self, loss, batch_tokens, step_tokens):
        seen.append((batch_tokens, step_tokens))
        return normalised(self, loss, batch_tokens, step_tokens)

    monkeypatch.setattr(TaskModule, "_step_normalised", spy)
    recipe = tiny_recipe("generation", _data("generation", tmp_path), tmp_path / "runs", "decoder",
                         options={"sample_every": 0})
    nlpkit.run(recipe, ["optimization.accumulate_grad_batches=2", "training.max_steps=-1", "training.epochs=1",
                        "trainer.val_check_interval=null", *batching])
    assert len(seen) >= 3
    while seen:  # steps of 2 batches, the epoch's last of 1 where its batches are odd in number
        batches = 2 if len(seen) >= 2 and seen[0][1] == seen[0][0] + seen[1][0] else 1
        step = seen[:batches]
        del seen[:batches]
        assert all(count == sum(tokens for tokens, _ in step) for _, count in step), step
        assert batches == 2 or not seen
