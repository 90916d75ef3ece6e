"""The NER head as a ``transformers`` token-classification head (export, pretrained heads).

nlpkit's head is dropout then a linear layer on every token's hidden state:
exactly ``BertForTokenClassification``'s (and RoBERTa's, DistilBERT's)
``dropout`` + ``classifier``.
"""

from __future__ import annotations

from nlpkit.tasks import HFHead

_ARCHITECTURES = {
    "bert": "BertForTokenClassification",
    "roberta": "RobertaForTokenClassification",
    "distilbert": "DistilBertForTokenClassification",
}


def token_classification_head(family: str, labels: list[str]) -> HFHead | None:
    """The HF head matching the NER head for a checkpoint family, or None when there is none."""
    if family not in _ARCHITECTURES:
        return None
    config = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
    }
    return HFHead(_ARCHITECTURES[family], {f"1.{p}": f"classifier.{p}" for p in ("weight", "bias")}, config)
