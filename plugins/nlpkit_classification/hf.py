"""Classification heads as ``transformers`` sequence-classification heads (export, pretrained heads).

The head takes its family's layout (``family_head``: the family file's
``HEADS`` table): BERT's tanh pooler + classifier, RoBERTa's and ELECTRA's
``classifier.dense`` + ``classifier.out_proj`` (tanh / GELU), DistilBERT's
``pre_classifier`` (ReLU) ... Without a family it is BERT's layout, which
then has no class to export to. Mean pooling exists only where the class
offers it.
"""

from __future__ import annotations

from nlpkit.tasks import HeadShape, HFHead, family_head, shaped_hf_head

# nlpkit's own layout, for backbones whose family has no classification class.
OWN_LAYOUT = HeadShape("", "classifier", "pooler.dense", "tanh")


def classification_layout(family: str | None) -> HeadShape:
    """The layout a classification head takes on a backbone of ``family``."""
    return family_head(family, "sequence_classification") or OWN_LAYOUT


def sequence_classification_head(family: str, labels: list[str], multi_label: bool, pooling: str) -> HFHead | None:
    """The HF head matching a classification head, or None when there is none."""
    shape = family_head(family, "sequence_classification")
    if shape is None or pooling not in shape.poolings:
        return None
    config = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "problem_type": "multi_label_classification" if multi_label else "single_label_classification",
        **{key: value.format(pooling=pooling) if isinstance(value, str) else value for key, value in shape.config.items()},
    }
    return shaped_hf_head(shape, config)
