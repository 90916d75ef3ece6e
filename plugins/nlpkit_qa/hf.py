"""The question-answering head as a ``transformers`` question-answering head (export, pretrained heads).

nlpkit's head is one linear layer from each token's hidden state to a start
and an end score: exactly ``BertForQuestionAnswering``'s (and RoBERTa's,
DistilBERT's) ``qa_outputs``, ``Linear(hidden, 2)``, whose two outputs are
split into ``start_logits`` and ``end_logits`` in that order.
"""

from __future__ import annotations

from nlpkit.tasks import HFHead

_ARCHITECTURES = {
    "bert": "BertForQuestionAnswering",
    "roberta": "RobertaForQuestionAnswering",
    "distilbert": "DistilBertForQuestionAnswering",
}


def question_answering_head(family: str) -> HFHead | None:
    """The HF head matching the QA head for a checkpoint family, or None when there is none."""
    if family not in _ARCHITECTURES:
        return None
    # qa_outputs has config.num_labels outputs: two, whatever a fine-tuned source checkpoint had.
    config = {"num_labels": 2, "id2label": {0: "LABEL_0", 1: "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1}}
    return HFHead(_ARCHITECTURES[family], {p: f"qa_outputs.{p}" for p in ("weight", "bias")}, config)
