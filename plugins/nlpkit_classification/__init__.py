"""Text classification of a sentence or a pair, one label or several (labels.py): the plugin to copy.

The head pools the first token (or the tokens' mean), then takes the backbone family's layout (hf.py): BERT's
tanh "pooler" and a linear layer, RoBERTa's and ELECTRA's classifier.dense and out_proj ..."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

import nlpkit
from nlpkit.tasks import BackboneConfig, HFHead, Task, TaskModel, TaskTokenizer, head_layers
from nlpkit_classification.hf import classification_layout, sequence_classification_head
from nlpkit_classification.labels import RowLabels
from nlpkit_classification.report import classification_section

if TYPE_CHECKING:
    import torchmetrics

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
    learnt_attributes = ("labels",)  # saved in the run folder by state(), set back by load_state()
    renamed_weights = {"head.0.": "head.dense.", "head.3.": "head.out."}  # run folders from before the names

    def __init__(self, config: ClassificationOptions, tokenizer: TaskTokenizer) -> None:
        super().__init__(config, tokenizer)
        self.labels: list[str] = []  # learnt from the training split by setup
        self.row_labels = RowLabels(config.multi_label, config.label_separator)

    def setup(self, splits: dict[str, Any]) -> None:
        self.labels = self.row_labels.learn(splits["train"]["label"])

    def check_split(self, where: str, dataset: Any) -> None:
        self.row_labels.check(where, dataset["label"], self.labels)

    def encode(self, examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        encodings = self.tokenizer.encode_batch(examples["text"], examples.get("text_pair"))
        features: dict[str, list[Any]] = {"input_ids": [e.ids for e in encodings], "token_type_ids": [e.type_ids for e in encodings]}
        if "label" in examples:
            features["labels"] = self.row_labels.targets(examples["label"], self.labels)
        return features

    def build_head(self, backbone_config: BackboneConfig) -> nn.Module:
        return head_layers(classification_layout(self.checkpoint_family), backbone_config, len(self.labels),
                           self.config.dropout)

    def forward(self, model: TaskModel, batch: dict[str, Any]) -> torch.Tensor:
        mask = batch["attention_mask"]
        hidden = model.backbone(batch["input_ids"], attention_mask=mask, token_type_ids=batch["token_type_ids"]).last_hidden_state
        pooled = hidden[:, 0] if self.config.pooling == "cls" else (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return model.head(pooled)  # (batch, labels)

    def loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        if self.config.multi_label:
            return F.binary_cross_entropy_with_logits(logits, batch["labels"].to(logits.dtype))
        return F.cross_entropy(logits, batch["labels"])

    def metrics(self) -> dict[str, torchmetrics.Metric]:  # multi-label accuracy: right yes/no decisions over all labels
        kind: Literal["multilabel", "multiclass"] = "multilabel" if self.config.multi_label else "multiclass"
        import torchmetrics  # here, not at the top: it takes seconds to import, which loading a run need not pay

        sizes = dict(num_classes=len(self.labels), num_labels=len(self.labels), threshold=self.config.threshold)
        return {"accuracy": torchmetrics.Accuracy(kind, **sizes, average="micro"),
                "macro_f1": torchmetrics.F1Score(kind, **sizes, average="macro")}

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid() if self.config.multi_label else logits.float().softmax(-1)

    def evaluate_batch(self, model: TaskModel, batch: dict[str, Any], logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.probabilities(logits), batch["labels"]

    def decode(self, logits: torch.Tensor, batch: dict[str, Any]) -> list[dict[str, Any]]:
        answers = []
        for scores in (dict(zip(self.labels, row)) for row in self.probabilities(logits).tolist()):
            best = max(scores, key=scores.__getitem__)
            chosen = ({"labels": [label for label, p in scores.items() if p >= self.config.threshold]}
                      if self.config.multi_label else {"label": best})
            answers.append({**chosen, "score": scores[best], "scores": scores})
        return answers

    def hf_head(self, family: str) -> HFHead | None:  # export, and a pretrained checkpoint's head to start from
        return sequence_classification_head(family, self.labels, self.config.multi_label, self.config.pooling)

    def report_section(self, predictions, run):  # the run report: confusion matrix, per-label scores (report.py)
        return classification_section(self.labels, self.row_labels.of, self.config.multi_label, predictions)


@nlpkit.hookimpl
def nlpkit_register_tasks() -> list[type[Task]]:
    return [Classification]
