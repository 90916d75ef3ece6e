"""Extractive question answering: the answer is a span of the context, with character offsets.

A minimal recipe (SQuAD JSON; ``data.py`` describes the row layouts)::

    task: qa
    backbone: {pretrained: models/all-minilm-l6-v2}
    data: {format: squad, train: train-v1.1.json, validation: dev-v1.1.json}
    qa: {doc_stride: 128, max_answer_length: 30}

Rows hold ``question`` and ``context`` (all ``predict`` needs) and, to train
or evaluate, gold answers: an ``answers`` column ``{"text": [...],
"answer_start": [...]}`` or flat ``answer`` + ``answer_start`` columns.
``predict`` answers ``{"answer", "start", "end", "score"}`` with
``context[start:end] == answer``; "no answer" (``qa.allow_empty``) is
``{"answer": "", "start": -1, "end": -1}``, so the slice still holds.

The head is BERT's for SQuAD (Devlin et al. 2019, section 4.2): a linear
layer gives every token a start and an end score. A context longer than the
model is read in windows that share ``doc_stride`` tokens (``spans.py``);
all windows of one example are one feature, collated as (batch, windows,
seq), so the best span is chosen over all of them whatever the batching.
Metrics are torchmetrics' ``SQuAD`` exact match and F1 (0-100) against all
gold answers, as the official ``evaluate-v1.1.py`` scores them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import nlpkit
from nlpkit.tasks import (BackboneConfig, HFHead, NlpkitError, Prediction, ReportSection, RunRecord, Task, TaskModel,
                          family_head, head_layers, pad)
from nlpkit_qa.data import ANSWER_COLUMNS, FORMATS, check_answers, gold_answers
from nlpkit_qa.hf import question_answering_head
from nlpkit_qa.spans import Span, answer_tokens, best_span, characters, context_span

if TYPE_CHECKING:
    import torchmetrics

__all__ = ["QuestionAnswering", "QAOptions"]

IGNORED = -100  # the target of a padding window (F.cross_entropy's ignore_index)
_PADDING = -1e9  # the score of a padding token, which is never an answer


@dataclass
class QAOptions:
    doc_stride: int = 128  # context tokens that consecutive windows share
    max_answer_length: int = 30  # the longest answer, in tokens
    max_question_length: int = 64  # longer questions are cut to this many tokens (BERT's max_query_length)
    allow_empty: bool = False  # SQuAD v2: "no answer" may win, and training rows may have no answer

    def __post_init__(self) -> None:
        minimums = {"doc_stride": 0, "max_answer_length": 1, "max_question_length": 1}
        for key, minimum in minimums.items():
            if getattr(self, key) < minimum:
                raise ValueError(f"{key}: expected an integer >= {minimum}, got {getattr(self, key)}")


class QuestionAnswering(Task):
    name = "qa"
    # Run folders from before the head took its family's layout (a bare Linear then).
    renamed_weights = {"head.weight": "head.out.weight", "head.bias": "head.out.bias"}
    backbone_kinds = ("encoder",)
    config_class = QAOptions
    input_columns = ("question", "context")
    optional_columns = ANSWER_COLUMNS  # answers, or answer + answer_start: check_split requires one layout
    target_columns = ()  # so that predict and `nlpkit predict` need only question and context
    metric_names = ("exact_match", "f1")

    config: QAOptions

    @classmethod
    def text_columns(cls, column_names: Sequence[str]) -> list[str]:
        return [c for c in cls.input_columns if c in column_names]  # answers are context text already

    def check_options(self) -> None:
        length, stride = self.tokenizer.max_length, self.config.doc_stride
        if stride >= length:
            raise NlpkitError(f"doc_stride: {stride} is not below tokenizer.max_length ({length})")
        pair = self.tokenizer.encode("a", "b", truncation=False)
        bare = self.tokenizer.encode_batch(["a", "b"], add_special_tokens=False, truncation=False)
        if not pair.sequence_ids or pair.sequence_ids[0] is not None:
            raise NlpkitError("tokenizer: question answering needs a special token ([CLS], <s>) first in each "
                              "window, where a window without the answer points; this tokenizer puts none there")
        specials = len(pair.ids) - sum(len(e.ids) for e in bare)
        room = length - specials - self.config.max_question_length
        if stride >= room:
            raise NlpkitError(f"doc_stride: {stride} is not below the {max(room, 0)} context tokens a window holds "
                              f"(tokenizer.max_length {length}, less {specials} special tokens and a question of up "
                              f"to max_question_length {self.config.max_question_length} tokens)")

    def check_split(self, where: str, dataset: Any) -> None:
        check_answers(where, dataset, self.config.allow_empty)

    # -- features -----------------------------------------------------------------

    def _questions(self, questions: list[str]) -> list[str]:
        """Questions without leading space (as run_qa.py), cut after ``max_question_length`` tokens."""
        questions = [q.lstrip() for q in questions]
        limit = self.config.max_question_length
        for i, encoding in enumerate(self.tokenizer.encode_batch(questions, add_special_tokens=False, truncation=False)):
            while len(encoding.ids) > limit:  # a cut inside a word may encode to more tokens: cut again
                cut = min(encoding.offsets[limit - 1][1], len(questions[i]) - 1)
                questions[i] = questions[i][:cut]
                encoding = self.tokenizer.encode(questions[i], add_special_tokens=False, truncation=False)
        return questions

    def encode(self, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        contexts = examples.get("context") or [None] * len(examples["question"])
        if not all(isinstance(c, str) for c in contexts):  # predict("a text"): a question without its context
            raise NlpkitError("qa: each input needs a question and its context: {\"question\": ..., \"context\": ...}")
        windows = self.tokenizer.encode_windows(self._questions(examples["question"]), contexts,
                                                stride=self.config.doc_stride)
        gold = gold_answers(examples)
        keys = ["input_ids", "token_type_ids", "offsets", "context_span", "context"]
        if gold is not None:
            keys += ["start_positions", "end_positions", "answer_texts", "answer_starts"]
        features: dict[str, list[Any]] = {key: [] for key in keys}
        for i, encodings in enumerate(windows):
            spans = [context_span(e.sequence_ids) for e in encodings]
            offsets = [[list(o) for o in e.offsets] for e in encodings]
            features["input_ids"].append([e.ids for e in encodings])  # (windows, tokens)
            features["token_type_ids"].append([e.type_ids for e in encodings])
            features["offsets"].append(offsets)
            features["context_span"].append([list(s) for s in spans])
            features["context"].append(contexts[i])
            if gold is not None:
                texts, starts = gold[i]
                # Trained on the first gold answer, as BERT and run_qa.py are; none: every window points at [CLS].
                targets = [answer_tokens(o, s, starts[0], starts[0] + len(texts[0])) if texts[0] else (0, 0)
                           for o, s in zip(offsets, spans)]
                features["start_positions"].append([t[0] for t in targets])
                features["end_positions"].append([t[1] for t in targets])
                features["answer_texts"].append(texts)
                features["answer_starts"].append(starts)
        return features

    def feature_length(self, features: dict[str, Any]) -> int:
        return sum(len(window) for window in features["input_ids"])

    def collate(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        windows = max(len(f["input_ids"]) for f in features)
        longest = max(len(w) for f in features for w in f["input_ids"])
        shape = (len(features), windows, longest)
        input_ids = torch.full(shape, self.tokenizer.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros(shape, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        context_mask = torch.zeros(shape, dtype=torch.bool)
        for b, feature in enumerate(features):
            for k, window in enumerate(feature["input_ids"]):
                input_ids[b, k, : len(window)] = torch.tensor(window)
                token_type_ids[b, k, : len(window)] = torch.tensor(feature["token_type_ids"][k])
                attention_mask[b, k, : len(window)] = 1
                first, stop = feature["context_span"][k]
                context_mask[b, k, first:stop] = True
        batch: dict[str, Any] = {
            "input_ids": input_ids,  # (batch, windows, seq)
            "token_type_ids": token_type_ids,
            "attention_mask": attention_mask,
            "context_mask": context_mask,  # (batch, windows, seq): tokens an answer may cover
            "window_mask": pad([[1] * len(f["input_ids"]) for f in features], 0).bool(),  # (batch, windows)
            "offsets": [f["offsets"] for f in features],  # plain lists: characters of each token
            "context": [f["context"] for f in features],
        }
        if "start_positions" in features[0]:
            for key in ("start_positions", "end_positions"):
                batch[key] = pad([f[key] for f in features], IGNORED)  # (batch, windows)
            batch["answer_texts"] = [f["answer_texts"] for f in features]
            batch["answer_starts"] = [f["answer_starts"] for f in features]
        return batch

    # -- model ------------------------------------------------------------------

    def build_head(self, backbone_config: BackboneConfig) -> nn.Module:
        # A start and an end score per token; no dropout before them, as in the transformers classes.
        return head_layers(family_head(self.checkpoint_family, "question_answering"), backbone_config, 2, 0.0)

    def forward(self, model: TaskModel, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        real = batch["window_mask"]
        # Only real windows go through the backbone: (windows in the batch, seq, hidden).
        hidden = model.backbone(batch["input_ids"][real], attention_mask=batch["attention_mask"][real],
                                token_type_ids=batch["token_type_ids"][real]).last_hidden_state
        logits = model.head(hidden).float()  # (windows in the batch, seq, 2)
        start = logits.new_zeros(batch["input_ids"].shape)  # (batch, windows, seq)
        end = logits.new_zeros(batch["input_ids"].shape)
        start[real], end[real] = logits[..., 0], logits[..., 1]
        return {"start_logits": start, "end_logits": end}

    def loss(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        real = batch["window_mask"]
        padding = batch["attention_mask"][real] == 0  # (windows in the batch, seq): never a target
        losses = [F.cross_entropy(outputs[f"{side}_logits"][real].masked_fill(padding, _PADDING),
                                  batch[f"{side}_positions"][real]) for side in ("start", "end")]
        return (losses[0] + losses[1]) / 2

    # -- answers --------------------------------------------------------------------

    def _spans(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> list[Span]:
        spans = []
        for b, real in enumerate(batch["window_mask"]):
            spans.append(best_span(outputs["start_logits"][b, real], outputs["end_logits"][b, real],
                                   batch["context_mask"][b, real], self.config.max_answer_length,
                                   self.config.allow_empty))
        return spans

    def decode(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> list[dict[str, Any]]:
        answers = []
        for span, context, offsets in zip(self._spans(outputs, batch), batch["context"], batch["offsets"]):
            start, end = (-1, -1) if span.empty else characters(context, offsets[span.window], span.start, span.end)
            answers.append({"answer": context[start:end], "start": start, "end": end, "score": span.probability})
        return answers

    def metrics(self) -> dict[str, torchmetrics.Metric]:
        from torchmetrics.text import SQuAD  # here: torchmetrics takes seconds to import

        return {"squad": SQuAD()}  # computes {"exact_match", "f1"}, 0-100

    def evaluate_batch(self, model: TaskModel, batch: dict[str, Any],
                       outputs: dict[str, torch.Tensor]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        predicted = [{"prediction_text": a["answer"], "id": str(i)} for i, a in enumerate(self.decode(outputs, batch))]
        gold = [{"answers": {"text": texts, "answer_start": starts}, "id": str(i)}
                for i, (texts, starts) in enumerate(zip(batch["answer_texts"], batch["answer_starts"]))]
        return predicted, gold

    def report_section(self, predictions: list[Prediction], run: RunRecord) -> ReportSection:
        from nlpkit_qa.report import qa_section

        return qa_section(predictions)

    def hf_head(self, family: str) -> HFHead | None:  # export, and a QA checkpoint's head to start from
        return question_answering_head(family)


@nlpkit.hookimpl
def nlpkit_register_tasks() -> list[type[Task]]:
    return [QuestionAnswering]


@nlpkit.hookimpl
def nlpkit_register_data_formats() -> dict[str, Any]:
    return dict(FORMATS)
