"""Text classification: one sentence or a sentence pair; one label or several.

The model task plugin: copy this file to write your own. A minimal recipe::

    task: classification
    backbone: {preset: encoder-tiny}
    data: {train: train.csv, validation: dev.csv, columns: {text: sentence}}

Multi-label rows give a list of labels (JSON) or one string split on
``label_separator`` (CSV). The head is BERT's: a tanh "pooler" on the first
token (or the tokens' mean), then a linear layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
import torchmetrics.classification as tmc
from torch import nn

import nlpkit
from nlpkit.tasks import NlpkitError, Task, pad


@dataclass
class ClassificationOptions:
    multi_label: bool = False
    threshold: float = 0.5  # multi-label: a label is predicted when its probability >= threshold
    label_separator: str = ","
    pooling: Literal["cls", "mean"] = "cls"
    dropout: float = 0.1


class Classification(Task):
    name = "classification"
    backbone_kinds = ("encoder",)
    config_class = ClassificationOptions
    input_columns = ("text",)
    optional_columns = ("text_pair",)
    metric_names = ("accuracy", "macro_f1")
    labels: list[str] = []

    def _split_labels(self, value) -> list[str]:
        if not self.config.multi_label:
            return [str(value)]
        values = value if isinstance(value, list) else str(value).split(self.config.label_separator)
        return [str(v).strip() for v in values if str(v).strip()]

    def setup(self, splits):
        self.labels = sorted({label for v in splits["train"]["label"] for label in self._split_labels(v)})
        if len(self.labels) < 2 and not self.config.multi_label:
            raise NlpkitError(f"data.train: needs at least two labels, found {self.labels}")

    def check_split(self, where, dataset):
        for row, value in enumerate(dataset["label"]):
            unseen = [label for label in self._split_labels(value) if label not in self.labels]
            if unseen:
                raise NlpkitError(f"{where}: row {row + 1}: label '{unseen[0]}' never seen in training "
                                  f"(training labels: {', '.join(self.labels)})")

    def state(self):
        return {"labels": self.labels}

    def load_state(self, state):
        self.labels = state["labels"]

    def encode(self, examples):
        encodings = self.tokenizer.encode_batch(examples["text"], examples.get("text_pair"))
        features = {"input_ids": [e.ids for e in encodings], "token_type_ids": [e.type_ids for e in encodings]}
        if "label" in examples:
            index = {label: i for i, label in enumerate(self.labels)}
            targets = [[index[label] for label in self._split_labels(v)] for v in examples["label"]]
            features["labels"] = (
                [[float(i in t) for i in range(len(self.labels))] for t in targets]
                if self.config.multi_label else [t[0] for t in targets]
            )
        return features

    def collate(self, features):
        ids = [f["input_ids"] for f in features]
        batch = {"input_ids": pad(ids, self.tokenizer.pad_token_id), "attention_mask": pad([[1] * len(i) for i in ids], 0),
                 "token_type_ids": pad([f["token_type_ids"] for f in features], 0)}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features])
        return batch

    def build_head(self, backbone_config):
        hidden = backbone_config.hidden_size
        return nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Dropout(self.config.dropout),
                             nn.Linear(hidden, len(self.labels)))

    def forward(self, model, batch):
        mask = batch["attention_mask"]
        hidden = model.backbone(batch["input_ids"], attention_mask=mask, token_type_ids=batch["token_type_ids"]).last_hidden_state
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return model.head(pooled)

    def loss(self, logits, batch):
        if self.config.multi_label:
            return F.binary_cross_entropy_with_logits(logits, batch["labels"].to(logits.dtype))
        return F.cross_entropy(logits, batch["labels"])

    def metrics(self):
        n = len(self.labels)
        if self.config.multi_label:  # accuracy: the share of right yes/no decisions over all labels
            return {"accuracy": tmc.MultilabelAccuracy(n, threshold=self.config.threshold, average="micro"),
                    "macro_f1": tmc.MultilabelF1Score(n, threshold=self.config.threshold, average="macro")}
        return {"accuracy": tmc.MulticlassAccuracy(n, average="micro"), "macro_f1": tmc.MulticlassF1Score(n, average="macro")}

    def evaluate_batch(self, model, batch, logits):
        if self.config.multi_label:
            return logits.float().sigmoid(), batch["labels"].int()
        return logits.float(), batch["labels"]

    def decode(self, logits, batch):
        probs = logits.float().sigmoid() if self.config.multi_label else logits.float().softmax(-1)
        answers = []
        for row in probs.tolist():
            scores = dict(zip(self.labels, row))
            best = max(scores, key=scores.get)
            chosen = ({"labels": [label for label, p in scores.items() if p >= self.config.threshold]}
                      if self.config.multi_label else {"label": best})
            answers.append({**chosen, "score": scores[best], "scores": scores})
        return answers

    def hf_head(self, family):
        from nlpkit_classification.hf import sequence_classification_head

        return sequence_classification_head(family, self.labels, self.config.multi_label, self.config.pooling)


@nlpkit.hookimpl
def nlpkit_register_tasks():
    return [Classification]
