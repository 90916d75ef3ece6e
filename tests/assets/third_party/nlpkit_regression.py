"""Regression: predict a number from a text (a review's stars, a readability score).

A task plugin for nlpkit in one module. A minimal recipe::

    task: regression
    backbone: {preset: encoder-tiny}
    data: {train: train.csv, validation: dev.csv, columns: {value: stars}}

The head reads the first token's hidden state. Targets are standardised with
the training split's mean and standard deviation (the task's state, saved in
the run folder), so the loss has the same scale whatever the column's unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

import nlpkit
from nlpkit.tasks import NlpkitError, Task


@dataclass
class RegressionOptions:
    dropout: float = 0.1


class Regression(Task):
    name = "regression"
    backbone_kinds = ("encoder",)
    config_class = RegressionOptions
    input_columns = ("text",)
    target_columns = ("value",)
    metric_names = ("mae", "rmse")
    lower_is_better = ("mae", "rmse")
    learnt_attributes = ("mean", "std")  # the task's state: saved in the run folder, set back on load

    def __init__(self, config, tokenizer):
        super().__init__(config, tokenizer)
        self.mean, self.std = 0.0, 1.0

    def check_split(self, where, dataset):
        for row, value in enumerate(dataset["value"]):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise NlpkitError(f"{where}: row {row + 1}: expected a number in 'value', got {value!r}")

    def setup(self, splits):
        self.check_split("data.train", splits["train"])  # nlpkit checks the splits after setup
        values = torch.tensor(splits["train"]["value"], dtype=torch.float64)
        self.mean, self.std = values.mean().item(), values.std(correction=0).item() or 1.0

    def encode(self, examples):
        features = {"input_ids": [e.ids for e in self.tokenizer.encode_batch(examples["text"])]}
        if "value" in examples:
            features["value"] = [(v - self.mean) / self.std for v in examples["value"]]
        return features

    def build_head(self, backbone_config):
        return nn.Sequential(nn.Dropout(self.config.dropout), nn.Linear(backbone_config.hidden_size, 1))

    def forward(self, model, batch):
        hidden = model.backbone(batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return model.head(hidden[:, 0]).squeeze(-1).float()  # (batch,) standardised values

    def loss(self, outputs, batch):
        return F.mse_loss(outputs, batch["value"])

    def metrics(self):
        return {"mae": torchmetrics.MeanAbsoluteError(), "rmse": torchmetrics.MeanSquaredError(squared=False)}

    def evaluate_batch(self, model, batch, outputs):
        return outputs * self.std + self.mean, batch["value"] * self.std + self.mean

    def decode(self, outputs, batch):
        return [{"value": v * self.std + self.mean} for v in outputs.tolist()]


@nlpkit.hookimpl
def nlpkit_register_tasks():
    return [Regression]
