"""Encoder training step: nlpkit Encoder + classification head vs `transformers` BERT.

One training step is forward, loss, backward, optimizer step and zero_grad of
the modules alone (no Lightning, no Trainer, no data loading), on a random
batch of 16 x 128 token ids with a full attention mask and 2 labels.

- nlpkit: `Encoder` with a `BackboneConfig` that mirrors `BertConfig`
  (post-norm, embedding norm, no final norm, erf GELU, eps 1e-12, dropout and
  attention dropout 0.1), and the head of the real classification plugin
  (`Classification.build_head`: Linear, Tanh, Dropout, Linear), run through
  the plugin's own `forward` and `loss`.
- transformers: `BertForSequenceClassification` of the same size (sdpa
  attention, its default).

How it measures, the optimizers, precisions and devices: `_train_step.py`, which
`decoder_train_step.py` shares.

Run (from the repository root; BERT-base fp32 is ~6-7 s a step on 2 quiet
cores, ~14 s of CPU time with one thread):

    python benchmarks/encoder_train_step.py --sizes base,small --precisions fp32,bf16 \\
        --steps 3 --warmup 1 --repeats 1

`--profile` adds one torch.profiler step per side after the timing of the
first process, printing the top operators by self CPU time.
"""

from __future__ import annotations

from typing import Any

import _train_step
from _train_step import SIDES  # noqa: F401  (benchmarks/gpu.py reads it here)

SIZES = {
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "small": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
}
VOCAB, MAX_POSITIONS, TYPE_VOCAB, NUM_LABELS = 30522, 512, 2, 2
BATCH, LENGTH = 16, 128
DROPOUT = 0.1


def _batch(torch: Any, batch_size: int = BATCH, device: str = "cpu") -> dict[str, Any]:
    generator = torch.Generator().manual_seed(1)
    batch = {
        "input_ids": torch.randint(0, VOCAB, (batch_size, LENGTH), generator=generator),
        "attention_mask": torch.ones(batch_size, LENGTH, dtype=torch.long),
        "token_type_ids": torch.zeros(batch_size, LENGTH, dtype=torch.long),
        "labels": torch.randint(0, NUM_LABELS, (batch_size,), generator=generator),
    }
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _build_nlpkit(size: str, precision: str, device: str = "cpu", compiled: bool = False) -> tuple[Any, Any, Any, str]:
    """nlpkit Encoder + the classification plugin's head, and TaskModule's optimizer; `compiled`: training.compile."""
    from nlpkit_classification import Classification, ClassificationOptions

    from nlpkit.backbones import BackboneConfig, Encoder
    from nlpkit.tasks import TaskModel

    config = BackboneConfig(
        kind="encoder", vocab_size=VOCAB, **SIZES[size], max_positions=MAX_POSITIONS,
        position_embedding="learned", type_vocab_size=TYPE_VOCAB, norm="layernorm", norm_eps=1e-12,
        norm_position="post", embedding_norm=True, final_norm=False, activation="gelu",
        dropout=DROPOUT, attention_dropout=DROPOUT,
    )
    task = Classification(ClassificationOptions(dropout=DROPOUT), tokenizer=None)
    task.load_state({"labels": [str(i) for i in range(NUM_LABELS)]})
    model = TaskModel(Encoder(config), task.build_head(config)).to(device)
    if compiled:
        from nlpkit.finetuning import compile_layers

        compile_layers(model.backbone)  # what `training.compile: true` does
    optimizer, optimizer_text = _train_step.task_module_optimizer(task, model, precision)

    def loss_fn(batch: dict[str, Any]) -> Any:
        return task.loss(task.forward(model, batch), batch)

    return model, optimizer, loss_fn, optimizer_text


def _build_transformers(size: str, precision: str, hf_optimizer: str, device: str = "cpu") -> tuple[Any, Any, Any, str]:
    """BertForSequenceClassification and the optimizer transformers' Trainer would build."""
    import transformers

    s = SIZES[size]
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=s["hidden_size"], num_hidden_layers=s["num_layers"],
        num_attention_heads=s["num_heads"], intermediate_size=s["intermediate_size"],
        max_position_embeddings=MAX_POSITIONS, type_vocab_size=TYPE_VOCAB, hidden_act="gelu",
        layer_norm_eps=1e-12, hidden_dropout_prob=DROPOUT, attention_probs_dropout_prob=DROPOUT,
        num_labels=NUM_LABELS,
    )
    model = transformers.BertForSequenceClassification(config).to(device)
    optimizer, optimizer_text = _train_step.trainer_optimizer(model, hf_optimizer)

    def loss_fn(batch: dict[str, Any]) -> Any:
        return model(**batch).loss

    return model, optimizer, loss_fn, optimizer_text


def _import_plugin() -> None:
    import nlpkit_classification  # noqa: F401


WORKLOAD = _train_step.Workload(
    script=__file__, description=__doc__.split("\n")[0],
    sizes={"base": "12 x 768: BERT-base", "small": "4 x 256"}, batch_size=BATCH, length=LENGTH,
    make_batch=_batch, build_nlpkit=_build_nlpkit, build_transformers=_build_transformers,
    import_plugin=_import_plugin,
)


def run_timing_child(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """`_train_step.run_timing_child` of this workload (benchmarks/gpu.py runs it on the GPU)."""
    return _train_step.run_timing_child(WORKLOAD, *args, **kwargs)


if __name__ == "__main__":
    _train_step.main(WORKLOAD)
