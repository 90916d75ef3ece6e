"""Text classification of a sentence or a sentence pair, one label or several: the plugin to copy.

A minimal recipe: ``{task: classification, backbone: {preset: encoder-tiny}, data: {train: train.csv,
validation: dev.csv, columns: {text: sentence}}}``. Multi-label rows hold a list of labels (JSON) or one
string split on ``label_separator`` (CSV). The head is BERT's: a tanh "pooler" on the first token (or
the tokens' mean), then a linear layer.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
import torchmetrics
import torchmetrics.classification as tmc
from torch import nn

import nlpkit
from nlpkit.tasks import BackboneConfig, HFHead, NlpkitError, Task, TaskModel, pad

Batch = dict[str, torch.Tensor]


@dataclass
class ClassificationOptions:
    multi_label: bool = False
    threshold: float = 0.5  # multi-label: a label is predicted when its probability >= threshold
    label_separator: str = ","
    pooling: Literal["cls", "mean"] = "cls"
    dropout: float = 0.1


class Classification(Task):
    name = "classification"
    config_class = ClassificationOptions
    optional_columns = ("text_pair",)
    metric_names = ("accuracy", "macro_f1")
    renamed_weights = {"head.0.": "head.dense.", "head.3.": "head.out."}  # run folders from before the names

    def __init__(self, config: ClassificationOptions, tokenizer: Any) -> None:
        super().__init__(config, tokenizer)
        self.labels: list[str] = []  # learnt from the training split by setup, restored by load_state

    def _labels_of(self, value: Any) -> list[str]:
        if not self.config.multi_label:
            return [str(value)]
        values = value if isinstance(value, list) else str(value).split(self.config.label_separator)
        return [str(v).strip() for v in values if str(v).strip()]

    def setup(self, splits: dict[str, Any]) -> None:
        self.labels = sorted({label for value in splits["train"]["label"] for label in self._labels_of(value)})
        if len(self.labels) < 2 and not self.config.multi_label:
            raise NlpkitError(f"data.train: needs at least two labels, found {self.labels}")

    def check_split(self, where: str, dataset: Any) -> None:
        for row, value in enumerate(dataset["label"]):
            for label in self._labels_of(value):
                if label not in self.labels:
                    raise NlpkitError(f"{where}: row {row + 1}: label '{label}' never seen in training "
                                      f"(training labels: {', '.join(self.labels)})")

    def state(self) -> dict[str, Any]:
        return {"labels": self.labels}

    def load_state(self, state: dict[str, Any]) -> None:
        self.labels = state["labels"]

    def encode(self, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        encodings = self.tokenizer.encode_batch(examples["text"], examples.get("text_pair"))
        features: dict[str, list[Any]] = {"input_ids": [e.ids for e in encodings], "token_type_ids": [e.type_ids for e in encodings]}
        if "label" in examples:
            targets = [[self.labels.index(label) for label in self._labels_of(v)] for v in examples["label"]]
            features["labels"] = ([[float(i in t) for i in range(len(self.labels))] for t in targets]
                                  if self.config.multi_label else [t[0] for t in targets])
        return features

    def collate(self, features: list[dict[str, Any]]) -> Batch:
        ids = [f["input_ids"] for f in features]
        batch = {"input_ids": pad(ids, self.tokenizer.pad_token_id), "attention_mask": pad([[1] * len(i) for i in ids], 0),
                 "token_type_ids": pad([f["token_type_ids"] for f in features], 0)}
        return {**batch, "labels": torch.tensor([f["labels"] for f in features])} if "labels" in features[0] else batch

    def build_head(self, backbone_config: BackboneConfig) -> nn.Module:
        hidden, labels = backbone_config.hidden_size, len(self.labels)
        return nn.Sequential(OrderedDict(dense=nn.Linear(hidden, hidden), tanh=nn.Tanh(),
                                         dropout=nn.Dropout(self.config.dropout), out=nn.Linear(hidden, labels)))

    def forward(self, model: TaskModel, batch: Batch) -> torch.Tensor:
        mask = batch["attention_mask"]
        hidden = model.backbone(batch["input_ids"], attention_mask=mask, token_type_ids=batch["token_type_ids"]).last_hidden_state
        pooled = hidden[:, 0] if self.config.pooling == "cls" else (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return model.head(pooled)  # (batch, labels)

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.config.multi_label:
            return F.binary_cross_entropy_with_logits(logits, batch["labels"].to(logits.dtype))
        return F.cross_entropy(logits, batch["labels"])

    def metrics(self) -> dict[str, torchmetrics.Metric]:
        n, threshold = len(self.labels), self.config.threshold
        if self.config.multi_label:  # accuracy: the share of right yes/no decisions over all labels
            return {"accuracy": tmc.MultilabelAccuracy(n, threshold=threshold, average="micro"),
                    "macro_f1": tmc.MultilabelF1Score(n, threshold=threshold, average="macro")}
        return {"accuracy": tmc.MulticlassAccuracy(n, average="micro"), "macro_f1": tmc.MulticlassF1Score(n, average="macro")}

    def evaluate_batch(self, model: TaskModel, batch: Batch, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.config.multi_label:
            return logits.float().sigmoid(), batch["labels"].int()
        return logits.float(), batch["labels"]

    def decode(self, logits: torch.Tensor, batch: Batch) -> list[dict[str, Any]]:
        probs = logits.float().sigmoid() if self.config.multi_label else logits.float().softmax(-1)
        answers = []
        for scores in (dict(zip(self.labels, row)) for row in probs.tolist()):
            best = max(scores, key=scores.__getitem__)
            chosen = ({"labels": [label for label, p in scores.items() if p >= self.config.threshold]}
                      if self.config.multi_label else {"label": best})
            answers.append({**chosen, "score": scores[best], "scores": scores})
        return answers

    def hf_head(self, family: str) -> HFHead | None:  # export, and a pretrained checkpoint's head to start from
        from nlpkit_classification.hf import sequence_classification_head

        return sequence_classification_head(family, self.labels, self.config.multi_label, self.config.pooling)


@nlpkit.hookimpl
def nlpkit_register_tasks() -> list[type[Task]]:
    return [Classification]
