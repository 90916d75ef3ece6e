"""Language modelling: train a decoder on plain text or prompt/completion pairs, then generate.

A minimal recipe::

    task: generation
    backbone: {preset: decoder-small}
    tokenizer: {train: bpe, vocab_size: 8000, max_length: 256}
    data: {format: text, train: corpus.txt, validation_split: 0.1}

Two kinds of rows:

- documents, in a ``text`` column (the ``text`` data format reads plain text
  files: a document is a paragraph, that is lines up to a blank line, by
  default; ``data.options.documents`` makes it a ``line`` or the whole
  ``file``). Each document is followed by the tokenizer's end-of-text token
  (its ``eos``) and the stream is cut into blocks of ``block_size + 1``
  tokens, each overlapping the next by one, so that every token is predicted
  once. The loss counts every token.
- prompt/completion pairs: rows with ``text`` (the prompt) and
  ``completion`` (JSON lines with a ``prompt`` key map it with
  ``data.columns: {text: prompt}``). One example per pair, prompt +
  completion + end-of-text, cut at ``block_size + 1`` tokens; the loss counts
  the completion and its end-of-text only.

Metrics: ``perplexity`` (exp of the mean loss per predicted token) and
``token_loss`` (that mean, in nats), beside nlpkit's ``val_loss`` (the mean of
the batches' losses). After each validation pass the model continues
``sample_prompts``; the samples are logged and appended to the run folder's
``samples.txt``. A trained run then ``generate``s (``nlpkit generate RUN
"prompt"``; ``nlpkit.load(RUN).generate(prompts, **options)``, options as in
``nlpkit.generation``), and ``predict`` scores texts (loss and perplexity of
each). ``nlpkit export`` writes a causal-LM folder (``GPT2LMHeadModel``,
``LlamaForCausalLM``, ``Gemma3ForCausalLM`` ...) that ``transformers`` loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

import nlpkit
from nlpkit.backbones.checkpoints import gemma, gpt2, llama, phi3
from nlpkit.generation import generate, resolve_options
from nlpkit.tasks import GeneratesText, HFHead, NlpkitError, Task, pad

IGNORE = -100  # label of a token the loss does not count (cross_entropy's ignore_index)

# transformers' causal-LM class of each decoder family nlpkit exports: the class each family's file saves as.
CAUSAL_LM_CLASSES = {**gpt2.ARCHITECTURES, **llama.ARCHITECTURES, **phi3.ARCHITECTURES, **gemma.ARCHITECTURES}


@dataclass
class LanguageModelingOptions:
    block_size: int | None = None  # tokens a training block feeds the model; None: tokenizer.max_length
    sample_prompts: list[str] = field(default_factory=lambda: [""])  # "" starts from the end-of-text token
    sample_max_new_tokens: int = 64
    sample_every: int = 1  # validation passes between samples; 0 turns them off
    sample_options: dict[str, Any] = field(default_factory=lambda: {"do_sample": True, "top_k": 50, "seed": 0})

    def __post_init__(self) -> None:
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size: expected an integer >= 1, got {self.block_size}")
        if self.sample_every < 0:
            raise ValueError(f"sample_every: expected an integer >= 0, got {self.sample_every}")
        if self.sample_max_new_tokens < 1:
            raise ValueError(f"sample_max_new_tokens: expected an integer >= 1, got {self.sample_max_new_tokens}")
        resolve_options(self.sample_options)  # an unknown or bad decoding option fails with the recipe


class Perplexity(torchmetrics.MeanMetric):
    """exp of the mean of per-token losses (nats): the perplexity of the predicted tokens."""

    higher_is_better = False  # type: ignore[assignment]  # torchmetrics' BaseAggregator declares it as None, Metric as bool | None

    def compute(self) -> torch.Tensor:
        return super().compute().exp()


class LanguageModeling(GeneratesText, Task):
    name = "generation"
    backbone_kinds = ("decoder",)
    config_class = LanguageModelingOptions
    input_columns = ("text",)
    optional_columns = ("completion",)
    target_columns = ()
    metric_names = ("perplexity", "token_loss")
    lower_is_better = ("perplexity", "token_loss")
    regroups_examples = True
    validations = 0  # validation passes seen, for sample_every

    @property
    def block_size(self) -> int:
        return self.config.block_size or self.tokenizer.max_length

    @property
    def end_of_text(self) -> int:
        eos = self.tokenizer.token_id("eos")
        if eos is None:
            raise NlpkitError("task generation: the tokenizer has no end-of-text (eos) token to end documents with; "
                              "train one with tokenizer.train: bpe or char")
        return eos

    def setup(self, splits):
        self.end_of_text  # fail before training, not in the middle of data preparation
        # Text is encoded without the tokenizer's template (<s> A </s>): the task marks document ends itself.
        # The run keeps the tokenizer that way, so its exported folder encodes prompts as training did.
        self.tokenizer.set_template(False)

    def state(self):
        # Saved in every checkpoint too: a resumed run samples at the validations the whole run would.
        return {"validations": self.validations}

    def load_state(self, state):
        self.validations = int(state.get("validations", 0))

    def _ids(self, texts) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False, truncation=False)]

    def encode(self, examples):
        eos = self.end_of_text
        prompts = self._ids(examples["text"])
        if "completion" not in examples:
            sequences = [ids + [eos] for ids in prompts]
            return {"input_ids": sequences, "labels": sequences}
        # A row without a completion (possible in predict's mixed inputs) is a document.
        given = [c if c is not None else "" for c in examples["completion"]]
        completions = [ids + [eos] for ids in self._ids(given)]
        input_ids, labels = [], []
        for p, c, text in zip(prompts, completions, examples["completion"]):
            input_ids.append(p + c if text is not None else p + [eos])
            labels.append([IGNORE] * len(p) + c if text is not None else p + [eos])
        return {"input_ids": input_ids, "labels": labels}

    def _pack(self, batch):
        # Documents one after the other, cut into blocks of block_size + 1 overlapping by one token.
        stream = [token for ids in batch["input_ids"] for token in ids]
        size = self.block_size
        blocks = [stream[i : i + size + 1] for i in range(0, max(len(stream) - 1, 1), size)]
        blocks = [b for b in blocks if len(b) > 1]
        return {"input_ids": blocks, "labels": blocks}

    def prepare(self, dataset):
        encoded = dataset.map(self.encode, batched=True, remove_columns=dataset.column_names, desc="generation: encoding")
        if "completion" in dataset.column_names:
            return encoded
        return encoded.map(self._pack, batched=True, remove_columns=encoded.column_names, desc="generation: blocks")

    def collate(self, features):
        limit = self.block_size + 1
        ids = [f["input_ids"][:limit] for f in features]
        batch_ids = pad(ids, self.tokenizer.pad_token_id)
        mask = pad([[1] * len(i) for i in ids], 0)
        labels = pad([f["labels"][:limit] for f in features], IGNORE)
        # Inputs are all tokens but the last; each position predicts the next token.
        return {"input_ids": batch_ids[:, :-1], "attention_mask": mask[:, :-1], "labels": labels[:, 1:]}

    def build_head(self, backbone_config):
        if self.block_size > backbone_config.max_positions:
            raise NlpkitError(f"generation.block_size: {self.block_size} tokens do not fit the backbone's "
                              f"max_positions ({backbone_config.max_positions})")
        return nn.Identity()  # the decoder's own LM head (backbone.logits) is the head

    def forward(self, model, batch):
        hidden = model.backbone(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return model.backbone.logits(hidden)  # (batch, seq, vocab)

    def _token_losses(self, logits, labels):
        return F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")

    def loss(self, logits, batch):
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)

    def target_tokens(self, batch):
        return int((batch["labels"] != IGNORE).sum())  # what `loss` averages over

    def metrics(self):
        return {"perplexity": Perplexity(), "token_loss": torchmetrics.MeanMetric()}

    def evaluate_batch(self, model, batch, logits):
        counted = batch["labels"] != IGNORE
        return (self._token_losses(logits, batch["labels"])[counted],)

    def decode(self, logits, batch):
        losses, counted = self._token_losses(logits, batch["labels"]), batch["labels"] != IGNORE
        answers = []
        for row_loss, row_counted in zip(losses, counted):
            n = int(row_counted.sum())
            mean = float(row_loss[row_counted].mean()) if n else None
            answers.append({"loss": mean, "perplexity": math.exp(mean) if mean is not None else None, "tokens": n})
        return answers

    def encode_prompts(self, texts):
        # An empty prompt starts where every training document started: after an end-of-text.
        return [ids or [self.end_of_text] for ids in self._ids(texts)]

    def validation_samples(self, model):
        self.validations += 1
        every = self.config.sample_every
        if not every or not self.config.sample_prompts or (self.validations - 1) % every:
            return []
        options = {**self.config.sample_options, "max_new_tokens": self.config.sample_max_new_tokens}
        texts = generate(model.backbone, self.tokenizer, self.config.sample_prompts, encode=self.encode_prompts,
                         defaults=self.generation_defaults(), **options)
        return [f"{prompt!r} -> {text!r}" for prompt, text in zip(self.config.sample_prompts, texts)]

    def report_section(self, predictions, run):
        from nlpkit_generation.report import generation_section

        return generation_section(predictions, run)

    def hf_head(self, family):
        if family not in CAUSAL_LM_CLASSES:
            return None
        ids = dict(self.generation_defaults())
        ids.setdefault("bos_token_id", self.end_of_text)  # GPT-2's convention: documents start after end-of-text
        return HFHead(CAUSAL_LM_CLASSES[family], {}, ids)


@nlpkit.hookimpl
def nlpkit_register_tasks():
    return [LanguageModeling]
