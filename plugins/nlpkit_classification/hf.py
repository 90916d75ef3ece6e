"""Classification heads as ``transformers`` sequence-classification heads (export, pretrained heads).

nlpkit's head is a tanh layer on the first token, dropout, then a linear layer:
exactly BERT's pooler + classifier, and RoBERTa's ``classifier.dense`` +
``classifier.out_proj``. Mean pooling has no counterpart there.
"""

from __future__ import annotations

from nlpkit.tasks import HFHead

# family -> (architecture, the names of the tanh layer and of the output layer)
_HEADS = {
    "bert": ("BertForSequenceClassification", "pooler.dense", "classifier"),
    "roberta": ("RobertaForSequenceClassification", "classifier.dense", "classifier.out_proj"),
}


def sequence_classification_head(family: str, labels: list[str], multi_label: bool, pooling: str) -> HFHead | None:
    """The HF head matching a classification head, or None when there is none."""
    if family not in _HEADS or pooling != "cls":
        return None
    architecture, dense, output = _HEADS[family]
    weights = {f"dense.{p}": f"{dense}.{p}" for p in ("weight", "bias")}
    weights.update({f"out.{p}": f"{output}.{p}" for p in ("weight", "bias")})
    config = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "problem_type": "multi_label_classification" if multi_label else "single_label_classification",
    }
    return HFHead(architecture, weights, config)
