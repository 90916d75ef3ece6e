"""Decoder training step: nlpkit Decoder + the generation plugin's loss vs `transformers` causal LMs.

One training step is forward, loss, backward, optimizer step and zero_grad of
the modules alone (no Lightning, no Trainer, no data loading), on a random
batch of 8 x 256 token ids with a full attention mask, each position
predicting the next token.

- transformers: `GPT2LMHeadModel` of GPT-2 small's size (`gpt2`: 12 layers x
  768, 50,257 tokens, tied LM head, dropout 0.1, the tanh GELU) and of 4 x 256
  (`gpt2-tiny`), and `LlamaForCausalLM` of the same depth and width (`llama`:
  12 x 768, 12 query and 4 key/value heads, SwiGLU 2048, RMSNorm, rotary
  positions, 32,000 tokens, untied head, no dropout: a current family), each
  with its default attention (sdpa) and `labels=input_ids` (the model shifts
  them).
- nlpkit: the `Decoder` of the `BackboneConfig` nlpkit's checkpoint reader
  makes of that same transformers config (`config_from_hf` of the family), run
  through the generation plugin's own `forward` and `loss` (`LanguageModeling`,
  block size 256), on the same tokens with the labels shifted as its `collate`
  shifts them (the last position ignored), so both sides compute the same
  loss over the same positions.

How it measures, the optimizers, precisions and devices: `_train_step.py`,
which `encoder_train_step.py` shares.

Run (from the repository root; GPT-2 small fp32 is several seconds a step on 2
quiet cores):

    python benchmarks/decoder_train_step.py --sizes gpt2,llama --precisions fp32,bf16 \\
        --steps 3 --warmup 1 --repeats 1
"""

from __future__ import annotations

import types
from typing import Any

import _train_step

BATCH, LENGTH = 8, 256


def _hf_config(size: str) -> Any:
    import transformers

    if size == "llama":
        return transformers.LlamaConfig(
            vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4,
            intermediate_size=2048, max_position_embeddings=1024, tie_word_embeddings=False,
        )
    width = {"gpt2": dict(n_layer=12, n_embd=768, n_head=12), "gpt2-tiny": dict(n_layer=4, n_embd=256, n_head=4)}
    return transformers.GPT2Config(**width[size])


def _batch(torch: Any, batch_size: int = BATCH, device: str = "cpu") -> dict[str, Any]:
    from nlpkit_generation import IGNORE  # the label both sides' cross-entropy skips

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 32000, (batch_size, LENGTH), generator=generator)  # ids every size's vocabulary holds
    shifted = torch.cat([ids[:, 1:], torch.full((batch_size, 1), IGNORE)], dim=1)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids, "shifted_labels": shifted}
    return {name: tensor.to(device) for name, tensor in batch.items()}


def _build_nlpkit(size: str, precision: str, device: str = "cpu", compiled: bool = False) -> tuple[Any, Any, Any, str]:
    """nlpkit Decoder from the same transformers config, the generation plugin's loss, TaskModule's optimizer."""
    from nlpkit_generation import LanguageModeling, LanguageModelingOptions

    from nlpkit.backbones import Decoder
    from nlpkit.backbones.checkpoints import gpt2, llama
    from nlpkit.tasks import TaskModel

    hf = _hf_config(size)
    family = llama if hf.model_type == "llama" else gpt2
    config = family.config_from_hf(hf.to_dict(), hf.model_type)
    # build_head checks the tokenizer's vocabulary against the backbone's; the batch is random ids.
    task = LanguageModeling(LanguageModelingOptions(block_size=LENGTH),
                            tokenizer=types.SimpleNamespace(vocab_size=config.vocab_size))
    model = TaskModel(Decoder(config), task.build_head(config)).to(device)
    if compiled:
        from nlpkit.finetuning import compile_layers

        compile_layers(model.backbone)  # what `training.compile: true` does
    optimizer, optimizer_text = _train_step.task_module_optimizer(task, model, precision)

    def loss_fn(batch: dict[str, Any]) -> Any:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                  "labels": batch["shifted_labels"]}
        return task.loss(task.forward(model, inputs), inputs)

    return model, optimizer, loss_fn, optimizer_text


def _build_transformers(size: str, precision: str, hf_optimizer: str, device: str = "cpu") -> tuple[Any, Any, Any, str]:
    """The transformers causal LM and the optimizer its Trainer would build."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_config(_hf_config(size)).to(device)
    optimizer, optimizer_text = _train_step.trainer_optimizer(model, hf_optimizer)

    def loss_fn(batch: dict[str, Any]) -> Any:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss

    return model, optimizer, loss_fn, optimizer_text


def _import_plugin() -> None:
    import nlpkit_generation  # noqa: F401


WORKLOAD = _train_step.Workload(
    script=__file__, description=__doc__.split("\n")[0],
    sizes={"gpt2": "12 x 768: GPT-2 small", "llama": "12 x 768 Llama, GQA 12/4", "gpt2-tiny": "4 x 256"},
    batch_size=BATCH, length=LENGTH, make_batch=_batch, build_nlpkit=_build_nlpkit,
    build_transformers=_build_transformers, import_plugin=_import_plugin,
)

if __name__ == "__main__":
    _train_step.main(WORKLOAD)
