"""One LoRA training step: nlpkit (its backbone + peft's layers) vs `transformers` + `peft`, and both vs full fine-tuning.

A step is forward, loss, backward, AdamW step and zero_grad of the modules
alone (no Lightning, no Trainer, no data loading), on a random batch.

Models (random weights, made once by `transformers` and saved to a temporary
folder that every side loads, so all start from the same checkpoint):

- `bert-base`: BERT-base (12 x 768, 3072 ffn), sequence classification with
  2 labels, batch 16 x 128. LoRA on `query` and `value` (peft's usual BERT
  targets).
- `llama-100m`: a Llama of 101M parameters (12 x 768, 12 heads, 4 KV heads,
  2048 ffn, 32000 tied vocabulary), causal LM loss, batch 8 x 256. LoRA on
  every Linear layer of the Transformer layers (`all-linear`).

Sides:

- `nlpkit-lora`: `nlpkit.backbones.from_pretrained(folder)`, the task
  plugin's head, forward and loss (classification / generation), adapters put
  on by `nlpkit.adapters.apply_adapters` from a recipe's `PeftSection`, and the
  optimizer `TaskModule.configure_optimizers` builds (trainable parameters
  only; fused AdamW).
- `peft-lora`: `AutoModelFor...from_pretrained(folder)` wrapped by
  `peft.get_peft_model` with the same `LoraConfig` (r 16, alpha 32, dropout
  0 as peft's default, `--lora-dropout` for another; BERT's pooler and classifier trained whole as `modules_to_save`,
  as nlpkit's head is), fused AdamW on its trainable parameters.
- `nlpkit-full` and `transformers-full`: the same models, every weight trained.

Precisions: `fp32`, and `bf16` (`torch.autocast("cpu", dtype=torch.bfloat16)`
around forward and loss; fp32 weights and optimizer state).

How it measures: one process per model and precision builds all four sides
and alternates their steps (the order reversed every step), so that all see
the same machine load; per side, the median step time and the ratio of
medians. Memory: each side then runs alone in a child process (warm-up + 1
steps); its peak RSS (`ru_maxrss`) and the growth over its RSS after imports,
and the size of its AdamW state (the tensors the optimizer holds).

Run (from the repository root, with the test extra installed; about 10
minutes on 2 quiet cores):

    python benchmarks/peft_step.py
    python benchmarks/peft_step.py --models llama-100m --precisions bf16 --steps 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import types
from pathlib import Path
from typing import Any

from _children import peak_rss_mib, rss_mib, run_child

MODELS: dict[str, dict[str, Any]] = {
    "bert-base": dict(batch=16, length=128, targets=["query", "value"], hf_targets=["query", "value"]),
    "llama-100m": dict(batch=8, length=256, targets=["all-linear"],
                       hf_targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
}
SIDES = ("nlpkit-lora", "peft-lora", "nlpkit-full", "transformers-full")
RANK, ALPHA = 16, 32
DROPOUT = 0.0  # peft's default; --lora-dropout sets another
LR, WEIGHT_DECAY, NUM_LABELS = 1e-4, 0.01, 2


def save_checkpoint(model: str, folder: Path) -> None:
    """The random checkpoint every side loads."""
    import torch
    import transformers

    torch.manual_seed(0)
    if model == "bert-base":
        config = transformers.BertConfig(num_labels=NUM_LABELS)
        transformers.BertForSequenceClassification(config).save_pretrained(folder)
    else:
        config = transformers.LlamaConfig(vocab_size=32000, hidden_size=768, num_hidden_layers=12,
                                          num_attention_heads=12, num_key_value_heads=4, intermediate_size=2048,
                                          max_position_embeddings=1024, tie_word_embeddings=True)
        transformers.LlamaForCausalLM(config).save_pretrained(folder)


def _batch(model: str) -> dict[str, Any]:
    import torch

    spec = MODELS[model]
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 30000, (spec["batch"], spec["length"] + 1), generator=generator)
    mask = torch.ones(spec["batch"], spec["length"], dtype=torch.long)
    if model == "bert-base":
        return {"input_ids": ids[:, :-1], "attention_mask": mask, "token_type_ids": torch.zeros_like(mask),
                "labels": torch.randint(0, NUM_LABELS, (spec["batch"],), generator=generator)}
    return {"input_ids": ids[:, :-1], "attention_mask": mask, "labels": ids[:, 1:]}


def _nlpkit_side(model: str, folder: Path, lora: bool, precision: str, dropout: float) -> tuple[Any, Any, Any]:
    """nlpkit's backbone from the folder, the task plugin's head, forward and loss, TaskModule's optimizer."""
    from nlpkit.adapters import apply_adapters
    from nlpkit.backbones import from_pretrained
    from nlpkit.recipe import OptimizationSection, PeftSection
    from nlpkit.tasks import TaskModel
    from nlpkit.training.module import TaskModule

    backbone = from_pretrained(folder)
    if model == "bert-base":
        from nlpkit_classification import Classification, ClassificationOptions

        task: Any = Classification(ClassificationOptions(), tokenizer=None)
        task.load_state({"labels": [str(i) for i in range(NUM_LABELS)]})
        task.checkpoint_family = "bert"  # BERT's pooler + classifier, as a run from the folder builds it
    else:
        from nlpkit_generation import LanguageModeling, LanguageModelingOptions

        task = LanguageModeling(LanguageModelingOptions(block_size=MODELS[model]["length"]), tokenizer=None)
    net = TaskModel(backbone, task.build_head(backbone.config))
    if lora:
        apply_adapters(net.backbone, PeftSection(r=RANK, alpha=ALPHA, dropout=dropout,
                                                 target_modules=MODELS[model]["targets"]))
    module = TaskModule(task, net, OptimizationSection(lr=LR, weight_decay=WEIGHT_DECAY))
    # configure_optimizers reads only these two trainer attributes.
    module._trainer = types.SimpleNamespace(precision="32-true" if precision == "fp32" else "bf16-mixed",
                                            estimated_stepping_batches=1000)
    optimizer = module.configure_optimizers()["optimizer"]

    def loss(batch: dict[str, Any]) -> Any:
        return task.loss(task.forward(net, batch), batch)

    return net, optimizer, loss


def _transformers_side(model: str, folder: Path, lora: bool, dropout: float) -> tuple[Any, Any, Any]:
    """The transformers class from the folder, wrapped by peft for LoRA; fused AdamW on what trains."""
    import torch
    import transformers

    head_class = (transformers.AutoModelForSequenceClassification if model == "bert-base"
                  else transformers.AutoModelForCausalLM)
    net = head_class.from_pretrained(folder)
    if lora:
        import peft

        # nlpkit's BERT classification head is the pooler and the classifier: peft trains both whole too.
        config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=dropout,
                                 target_modules=MODELS[model]["hf_targets"],
                                 modules_to_save=["pooler"] if model == "bert-base" else None,
                                 task_type="SEQ_CLS" if model == "bert-base" else "CAUSAL_LM")
        net = peft.get_peft_model(net, config)
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": WEIGHT_DECAY},
         {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}], lr=LR, fused=True)
    if model == "bert-base":
        return net, optimizer, lambda batch: net(**batch).loss

    def loss(batch: dict[str, Any]) -> Any:  # next-token labels already shifted, as nlpkit's batches hold them
        logits = net(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())

    return net, optimizer, loss


def _build(side: str, model: str, folder: Path, precision: str, dropout: float) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    lora = side.endswith("-lora")
    if side.startswith("nlpkit"):
        net, optimizer, loss_fn = _nlpkit_side(model, folder, lora, precision, dropout)
    else:
        net, optimizer, loss_fn = _transformers_side(model, folder, lora, dropout)
    net.train()
    batch = _batch(model)

    def step() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def optimizer_state_mib() -> float:
        return sum(t.numel() * t.element_size() for state in optimizer.state.values()
                   for t in state.values() if torch.is_tensor(t)) / 2**20

    return {"step": step, "state_mib": optimizer_state_mib,
            "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in net.parameters())}


def _import_everything() -> float:
    import nlpkit_classification  # noqa: F401
    import nlpkit_generation  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import nlpkit.training.module  # noqa: F401

    return rss_mib()


def timing_child(model: str, folder: Path, precision: str, steps: int, warmup: int, dropout: float) -> dict[str, Any]:
    _import_everything()
    sides = {side: _build(side, model, folder, precision, dropout) for side in SIDES}
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    losses: dict[str, list[float]] = {side: [] for side in SIDES}
    for i in range(warmup + steps):
        for side in (SIDES if i % 2 == 0 else SIDES[::-1]):
            start = time.perf_counter()
            losses[side].append(sides[side]["step"]())
            if i >= warmup:
                times[side].append(time.perf_counter() - start)
    return {"times": times, "losses": losses,
            "params": {side: (sides[side]["trainable"], sides[side]["total"]) for side in SIDES}}


def memory_child(side: str, model: str, folder: Path, precision: str, steps: int, dropout: float) -> dict[str, Any]:
    rss_imports = _import_everything()
    built = _build(side, model, folder, precision, dropout)
    for _ in range(steps):
        built["step"]()
    return {"rss_imports_mib": rss_imports, "state_mib": built["state_mib"](),
            "peak_rss_mib": peak_rss_mib()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="bert-base,llama-100m", help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16 (autocast)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured steps per side first")
    parser.add_argument("--lora-dropout", type=float, default=DROPOUT, help="the adapters' dropout (default 0)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    models, precisions = options.models.split(","), options.precisions.split(",")
    for model in models:
        if model not in MODELS:
            parser.error(f"unknown model {model!r}; known: {', '.join(MODELS)}")
    for precision in precisions:
        if precision not in ("fp32", "bf16"):
            parser.error(f"unknown precision {precision!r}; known: fp32, bf16")
    if options.child == "timing":
        print(json.dumps(timing_child(models[0], options.folder, precisions[0], options.steps, options.warmup,
                                      options.lora_dropout)))
        return
    if options.child:
        print(json.dumps(memory_child(options.child, models[0], options.folder, precisions[0], options.warmup + 1,
                                      options.lora_dropout)))
        return

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for model in models:
            folder = Path(scratch) / model
            save_checkpoint(model, folder)
            for precision in precisions:
                where = ["--models", model, "--precisions", precision, "--folder", str(folder),
                         "--steps", str(options.steps), "--warmup", str(options.warmup),
                         "--lora-dropout", str(options.lora_dropout)]
                run = run_child(__file__, ["--child", "timing", *where])
                memory = {side: run_child(__file__, ["--child", side, *where]) for side in SIDES}
                medians = {side: statistics.median(run["times"][side]) for side in SIDES}
                rows.append((model, precision, medians, memory, run["params"]))
                print(f"\n== {model} {precision}: {options.warmup} warm-up + {options.steps} steps per side", flush=True)
                for side in SIDES:
                    trainable, total = run["params"][side]
                    steps = ", ".join(f"{t:.3f}" for t in run["times"][side])
                    mem = memory[side]
                    print(f"  {side:18s} {trainable / 1e6:8.2f}M of {total / 1e6:.2f}M train; steps [{steps}] s; "
                          f"peak RSS {mem['peak_rss_mib']:.0f} MiB (+{mem['peak_rss_mib'] - mem['rss_imports_mib']:.0f} "
                          f"over imports); AdamW state {mem['state_mib']:.1f} MiB; loss "
                          f"{run['losses'][side][0]:.3f} -> {run['losses'][side][-1]:.3f}", flush=True)

    print("\n| model | precision | nlpkit LoRA s | peft LoRA s | ratio | nlpkit full s | LoRA / full (nlpkit) "
          "| peak RSS MiB: nlpkit LoRA / peft LoRA / nlpkit full | AdamW state MiB: LoRA / full |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, precision, medians, memory, _ in rows:
        peaks = " / ".join(f"{memory[side]['peak_rss_mib']:.0f}" for side in ("nlpkit-lora", "peft-lora", "nlpkit-full"))
        print(f"| {model} | {precision} | {medians['nlpkit-lora']:.3f} | {medians['peft-lora']:.3f} "
              f"| {medians['nlpkit-lora'] / medians['peft-lora']:.3f} | {medians['nlpkit-full']:.3f} "
              f"| {medians['nlpkit-lora'] / medians['nlpkit-full']:.3f} | {peaks} "
              f"| {memory['nlpkit-lora']['state_mib']:.1f} / {memory['nlpkit-full']['state_mib']:.1f} |")
    print("\nratio: nlpkit LoRA / peft LoRA step time (below 1: nlpkit is faster); transformers full-FT steps "
          "are in the detailed lines.")


if __name__ == "__main__":
    main()
