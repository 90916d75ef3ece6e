"""The NER head as a ``transformers`` token-classification head (export, pretrained heads).

nlpkit's head takes its family's layout (``family_head``): dropout then a
linear layer on every token's hidden state for BERT, RoBERTa, DistilBERT,
ELECTRA (``classifier``), with a transform before it where the family's
class has one (ModernBERT's ``head``).
"""

from __future__ import annotations

from nlpkit.tasks import HFHead, family_head, shaped_hf_head


def token_classification_head(family: str, labels: list[str]) -> HFHead | None:
    """The HF head matching the NER head for a checkpoint family, or None when there is none."""
    shape = family_head(family, "token_classification")
    if shape is None:
        return None
    config = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        **shape.config,
    }
    return shaped_hf_head(shape, config)
