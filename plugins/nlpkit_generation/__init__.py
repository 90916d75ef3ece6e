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

- conversations, from the ``chat`` data format (a ``messages`` column: JSON
  rows with ``messages``, or instruction / question-answer rows, see
  ``nlpkit.chat_data``). Each is rendered with a chat template: the file
  ``chat_template`` names, else the tokenizer's own (a checkpoint's
  ``chat_template``), else, for a tokenizer nlpkit trained, nlpkit's default
  (ChatML turns, ``<|im_start|>role ... <|im_end|>``; the two tokens are added
  to the tokenizer as special tokens and saved with the run). The loss counts
  the assistant's turns and the token that ends each (``loss_on: all``: every
  token), as the template marks them (``{% generation %}``) or, without
  marks, as rendering the conversation turn by turn shows them.

``packing: true`` puts several prompt/completion or chat examples into each row
of ``block_size`` tokens (first-fit, longest first; an example is never split,
one longer than a row is truncated and counted in the log), each attending only
to itself: positions restart per example and the decoder's mask is
block-diagonal (``nlpkit_generation.packing``). A packed batch's loss is the
mean over all its target tokens, as unpacked. For plain text,
``document_mask: true`` keeps the documents of a block from attending to each
other in the same way.

Metrics: ``perplexity`` (exp of the mean loss per predicted token) and
``token_loss`` (that mean, in nats), beside nlpkit's ``val_loss`` (the mean of
the batches' losses). After each validation pass the model continues
``sample_prompts``; the samples are logged and appended to the run folder's
``samples.txt``. With chat data and an ``answer_pattern`` (a regular
expression whose first group is the final answer), each validation pass also
answers the first ``answer_questions`` validation conversations and logs
``val_answer_accuracy``, the share whose answer equals the reference's. A
trained run then ``chat``s (``nlpkit chat RUN``; ``nlpkit.load(RUN).chat(messages)``)
through its template, or ``generate``s (``nlpkit generate RUN
"prompt"``; ``nlpkit.load(RUN).generate(prompts, **options)``, options as in
``nlpkit.generation``), and ``predict`` scores texts (loss and perplexity of
each). ``nlpkit export`` writes a causal-LM folder (``GPT2LMHeadModel``,
``LlamaForCausalLM``, ``Gemma3ForCausalLM`` ...) that ``transformers`` loads.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch.nn.functional as F
from torch import nn

import nlpkit
from nlpkit.backbones.checkpoints import gemma, gpt2, llama, phi3
from nlpkit.generation import generate, resolve_options
from nlpkit.tasks import GeneratesText, HFHead, NlpkitError, Task, pad
from nlpkit_generation.packing import document_blocks, pack_examples, shifted

IGNORE = -100  # label of a token the loss does not count (cross_entropy's ignore_index)

log = logging.getLogger("nlpkit")

# (task, datasets fingerprint) of the splits whose truncated examples were logged: prepare runs twice per split.
# Outside the task, whose state datasets hashes into the fingerprints of its maps (a change would defeat the cache).
_TRUNCATION_REPORTED: set[tuple[int, str]] = set()

# What a packed row holds (nlpkit_generation.packing): shifted tokens, each token's position and example.
PACKED_FEATURES = ("input_ids", "labels", "position_ids", "document_ids")

# transformers' causal-LM class of each decoder family nlpkit exports: the class each family's file saves as.
CAUSAL_LM_CLASSES = {**gpt2.ARCHITECTURES, **llama.ARCHITECTURES, **phi3.ARCHITECTURES, **gemma.ARCHITECTURES}


@dataclass
class LanguageModelingOptions:
    block_size: int | None = None  # tokens a training block feeds the model; None: tokenizer.max_length
    chat_template: str | None = None  # chat data: a Jinja template file; default the tokenizer's own, else nlpkit's
    loss_on: Literal["assistant", "all"] = "assistant"  # chat data: the turns whose tokens the loss counts
    packing: bool = False  # prompt/completion and chat examples: several to a row, each attending only to itself
    document_mask: bool = False  # plain text: the documents of a block do not attend to each other
    # Chat data: a regular expression whose first group is a reply's final answer (GSM8K: "####\\s*(\\S+)"). With it,
    # each validation pass answers the first answer_questions validation conversations (greedy) and reports the
    # share whose answer matches the reference's, as val_answer_accuracy.
    answer_pattern: str | None = None
    answer_questions: int = 100
    answer_max_new_tokens: int = 256
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
        if self.answer_pattern is not None:
            try:
                groups = re.compile(self.answer_pattern).groups
            except re.error as error:
                raise ValueError(f"answer_pattern: not a regular expression ({error})") from None
            if groups < 1:
                raise ValueError("answer_pattern: expected a group around the answer, as in '####\\s*(\\S+)'")
        if self.answer_questions < 1 or self.answer_max_new_tokens < 1:
            raise ValueError("answer_questions and answer_max_new_tokens: expected integers >= 1")


class LanguageModeling(GeneratesText, Task):
    name = "generation"
    backbone_kinds = ("decoder",)
    config_class = LanguageModelingOptions
    input_columns = ("text",)
    optional_columns = ("completion", "messages")
    target_columns = ()
    metric_names = ("perplexity", "token_loss")
    lower_is_better = ("perplexity", "token_loss")
    regroups_examples = True
    validations = 0  # validation passes seen, for sample_every
    # Validation conversations whose last (assistant) turn holds a reference answer; assigned, never mutated.
    questions: list[list[dict[str, str]]] = []

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

    @classmethod
    def input_fields(cls, present):
        return ("messages",) if "messages" in present else ("text",)

    def setup(self, splits):
        self.end_of_text  # fail before training, not in the middle of data preparation
        # Text is encoded without the tokenizer's template (<s> A </s>): the task marks document ends itself.
        # The run keeps the tokenizer that way, so its exported folder encodes prompts as training did.
        self.tokenizer.set_template(False)
        columns = splits["train"].column_names
        examples = "messages" in columns or "completion" in columns
        if self.config.packing and not examples:
            raise NlpkitError("generation.packing: packs prompt/completion and chat examples; plain text is cut into "
                              "blocks already (generation.document_mask: true keeps its documents apart)")
        if self.config.document_mask and examples:
            raise NlpkitError("generation.document_mask: applies to plain text; examples are kept apart by "
                              "generation.packing")
        if "messages" in columns:
            self._set_chat_template()
        if self.config.answer_pattern is not None:
            if "messages" not in columns or "validation" not in splits:
                raise NlpkitError("generation.answer_pattern: scores the replies to chat data's validation "
                                  "conversations; this run has none")
            self.questions = [messages for messages in splits["validation"]["messages"][: self.config.answer_questions]
                              if messages[-1]["role"] == "assistant"]

    def _set_chat_template(self):
        """The template chat data is rendered with: the recipe's file, else the tokenizer's own, else nlpkit's default.

        The run's tokenizer keeps it (``chat_template.jinja``), so ``chat`` and an export render as training did.
        """
        from nlpkit._files import read_text
        from nlpkit.chat_templates import DEFAULT_CHAT_TEMPLATE, DEFAULT_CHAT_TOKENS

        tokenizer = self.tokenizer
        if self.config.chat_template is not None:
            path = Path(self.config.chat_template).expanduser()
            tokenizer.chat_template = read_text(path, "generation.chat_template")
        elif tokenizer.chat_template is None:
            tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
            added = tokenizer.add_special_tokens(list(DEFAULT_CHAT_TOKENS))
            if added:
                log.info("chat: nlpkit's default template, with the special tokens %s added to the tokenizer",
                         " ".join(added))

    def state(self):
        # Saved in every checkpoint too: a resumed run samples at the validations the whole run would.
        # The questions are kept because a resumed run does not see its data's setup again.
        return {"validations": self.validations, "questions": self.questions}

    def load_state(self, state):
        self.validations = int(state.get("validations", 0))
        self.questions = list(state.get("questions", []))

    def _ids(self, texts) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False, truncation=False)]

    def _encode_chat(self, conversations):
        input_ids, labels = [], []
        for messages in conversations:
            ids, assistant = self.tokenizer.encode_chat(messages)
            input_ids.append(ids)
            everything = self.config.loss_on == "all"
            labels.append([t if everything or counted else IGNORE for t, counted in zip(ids, assistant)])
        return {"input_ids": input_ids, "labels": labels}

    def encode(self, examples):
        conversations = examples.get("messages")
        if conversations is not None and all(c is not None for c in conversations):
            return self._encode_chat(conversations)
        if conversations is not None:  # predict's mixed inputs: conversations and texts
            rows = [dict(zip(examples, values)) for values in zip(*examples.values())]
            encoded = [self.encode({k: [v] for k, v in row.items() if k != "messages" or v is not None}) for row in rows]
            return {key: [e[key][0] for e in encoded] for key in ("input_ids", "labels")}
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
        if self.config.document_mask:
            rows = [document_blocks(b, self.end_of_text) for b in blocks]
            return {key: [row[key] for row in rows] for key in PACKED_FEATURES}
        return {"input_ids": blocks, "labels": blocks}

    def _pack_examples(self, batch):
        examples = [shifted(ids, labels, self.block_size) for ids, labels in zip(batch["input_ids"], batch["labels"])]
        rows = pack_examples(examples, self.block_size)
        return {key: [row[key] for row in rows] for key in PACKED_FEATURES}

    def _report_truncation(self, dataset, encoded):
        import pyarrow.compute as pc  # type: ignore[import-untyped]  # datasets' own column format; no stubs

        lengths = pc.list_value_length(encoded.data.column("input_ids"))
        longer = pc.sum(pc.greater(lengths, self.block_size + 1)).as_py() or 0
        seen = (id(self), dataset._fingerprint)
        if longer and seen not in _TRUNCATION_REPORTED:
            _TRUNCATION_REPORTED.add(seen)
            log.warning("generation: %d of %d examples are longer than block_size + 1 (%d tokens): truncated",
                        longer, len(encoded), self.block_size + 1)

    def prepare(self, dataset):
        encoded = dataset.map(self.encode, batched=True, remove_columns=dataset.column_names, desc="generation: encoding")
        if "completion" in dataset.column_names or "messages" in dataset.column_names:
            self._report_truncation(dataset, encoded)
            if not self.config.packing:
                return encoded
            # One map batch packs this many examples among themselves: enough for full rows, bounded memory.
            return encoded.map(self._pack_examples, batched=True, batch_size=10_000,
                               remove_columns=encoded.column_names, desc="generation: packing")
        return encoded.map(self._pack, batched=True, remove_columns=encoded.column_names, desc="generation: blocks")

    def collate(self, features):
        if "document_ids" in features[0]:  # packed rows: shifted already, positions and examples given
            batch = {"input_ids": pad([f["input_ids"] for f in features], self.tokenizer.pad_token_id),
                     "attention_mask": pad([[1] * len(f["input_ids"]) for f in features], 0),
                     "labels": pad([f["labels"] for f in features], IGNORE)}
            return {**batch, "position_ids": pad([f["position_ids"] for f in features], 0),
                    "document_ids": pad([f["document_ids"] for f in features], 0)}
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
        if self.tokenizer.vocab_size > backbone_config.vocab_size:  # chat tokens added to a pretrained tokenizer
            raise NlpkitError(f"generation: the tokenizer has {self.tokenizer.vocab_size} tokens, more than the "
                              f"backbone's vocabulary of {backbone_config.vocab_size} (nlpkit's default chat template "
                              f"added its tokens); give a template written with the checkpoint's own tokens as "
                              f"generation.chat_template")
        return nn.Identity()  # the decoder's own LM head (backbone.logits) is the head

    def forward(self, model, batch):
        hidden = model.backbone(batch["input_ids"], attention_mask=batch["attention_mask"],
                                position_ids=batch.get("position_ids"),
                                document_ids=batch.get("document_ids")).last_hidden_state
        return model.backbone.logits(hidden)  # (batch, seq, vocab)

    def _token_losses(self, logits, labels):
        return F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")

    def loss(self, logits, batch):
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)

    def target_tokens(self, batch):
        return int((batch["labels"] != IGNORE).sum())  # what `loss` averages over

    def metrics(self):
        import torchmetrics  # here, not at the top: it takes seconds to import, which loading a run need not pay

        from nlpkit_generation.metrics import Perplexity

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

    def validation_scores(self, model):
        if self.config.answer_pattern is None or not self.questions:
            return {}
        from nlpkit.chat import reply

        pattern = re.compile(self.config.answer_pattern)

        def answer(text):
            found = pattern.search(text)
            return found.group(1).strip().rstrip(".").replace(",", "") if found else None

        prompts = [messages[:-1] for messages in self.questions]
        replies = reply(model.backbone, self.tokenizer, prompts, defaults=self.generation_defaults(),
                        max_new_tokens=self.config.answer_max_new_tokens)
        right = [answer(r["content"]) is not None and answer(r["content"]) == answer(m[-1]["content"])
                 for r, m in zip(replies, self.questions)]
        return {"answer_accuracy": sum(right) / len(right)}

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
