"""The question-answering head as a ``transformers`` question-answering head (export, pretrained heads).

nlpkit's head is one linear layer from each token's hidden state to a start
and an end score, after a transform where the family's class has one
(``family_head``): BERT's, RoBERTa's, DistilBERT's, ELECTRA's ``qa_outputs``,
``Linear(hidden, 2)``, whose two outputs are split into ``start_logits`` and
``end_logits`` in that order.
"""

from __future__ import annotations

from nlpkit.tasks import HFHead, family_head, shaped_hf_head


def question_answering_head(family: str) -> HFHead | None:
    """The HF head matching the QA head for a checkpoint family, or None when there is none."""
    shape = family_head(family, "question_answering")
    if shape is None:
        return None
    # qa_outputs has config.num_labels outputs: two, whatever a fine-tuned source checkpoint had.
    config = {"num_labels": 2, "id2label": {0: "LABEL_0", 1: "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
              **shape.config}
    return shaped_hf_head(shape, config)
