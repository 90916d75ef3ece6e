"""Answer spans in windows: the training targets of a gold answer, and the best span over all windows.

A window is ``[CLS] question [SEP] context-stretch [SEP]`` (RoBERTa: ``<s> q
</s></s> c </s>``); each context token has character offsets into the whole
context. As in BERT's SQuAD code (``run_squad.py``) and ``transformers``'
``run_qa.py``, a window whose context stretch holds the whole gold answer is
trained to point at its first and last tokens, every other window at the
first token (``[CLS]``), which also stands for "no answer".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["NO_ANSWER", "Span", "context_span", "answer_tokens", "best_span", "characters"]

NO_ANSWER = 0  # the token a window without the answer points at: the first, [CLS] / <s>


def context_span(sequence_ids: Sequence[int | None]) -> tuple[int, int]:
    """``[first, end)`` of a window's context tokens (those of the pair's second text); (0, 0) for none."""
    tokens = [i for i, s in enumerate(sequence_ids) if s == 1]
    return (tokens[0], tokens[-1] + 1) if tokens else (0, 0)


def answer_tokens(offsets: Sequence[Sequence[int]], span: Sequence[int], start: int, end: int) -> tuple[int, int]:
    """The tokens of the characters ``[start, end)`` in a window: (first, last), or (0, 0) when not wholly inside.

    Args:
        offsets: each token's ``(start, end)`` characters in the context.
        span: the window's ``[first, end)`` context tokens.
        start: the answer's first character.
        end: one past its last character.
    """
    first, stop = span
    if first >= stop or offsets[first][0] > start or offsets[stop - 1][1] < end:
        return NO_ANSWER, NO_ANSWER
    token_start = first
    while token_start + 1 < stop and offsets[token_start + 1][0] <= start:
        token_start += 1
    token_end = token_start
    while offsets[token_end][1] < end:
        token_end += 1
    return token_start, token_end


@dataclass(frozen=True)
class Span:
    """The chosen answer of one example: tokens ``start..end`` (inclusive) of ``window``.

    ``empty`` is "no answer" (the first token's score won); ``probability`` is
    the start probability times the end probability, each a softmax over the
    window's context tokens (and its first token when empty answers are
    allowed), as ``transformers``' question-answering pipeline reports it.
    """

    window: int
    start: int
    end: int
    probability: float
    empty: bool


def best_span(start_logits: torch.Tensor, end_logits: torch.Tensor, context: torch.Tensor,
              max_answer_length: int, allow_empty: bool) -> Span:
    """The span with the best start + end score over all windows of one example.

    Every pair of context tokens with ``start <= end < start + max_answer_length``
    in one window is a candidate: an exhaustive search, so no n-best pruning
    of starts and ends (``run_qa.py``'s ``n_best_size``) can lose the best.
    With ``allow_empty``, "no answer" wins when its score, the lowest over the
    windows of the first token's start + end (as ``run_qa.py`` takes it),
    beats the best span's.

    Args:
        start_logits: (windows, seq) start scores of the example's real windows.
        end_logits: (windows, seq) end scores.
        context: (windows, seq) bool, True at context tokens.
        max_answer_length: the longest answer, in tokens.
        allow_empty: whether "no answer" may win.
    """
    start_logits, end_logits = start_logits.float(), end_logits.float()
    windows, seq = start_logits.shape
    positions = torch.arange(seq, device=start_logits.device)
    length = positions[None, :] - positions[:, None]  # (start token, end token): end - start
    allowed = ((length >= 0) & (length < max_answer_length))[None] & context[:, :, None] & context[:, None, :]
    scores = (start_logits[:, :, None] + end_logits[:, None, :]).masked_fill(~allowed, float("-inf"))
    best = int(scores.flatten().argmax())  # (windows, start, end) flattened
    window, rest = divmod(best, seq * seq)
    start, end = divmod(rest, seq)
    null = start_logits[:, NO_ANSWER] + end_logits[:, NO_ANSWER]  # (windows,)
    null_window = int(null.argmin())
    empty = not bool(allowed.any()) or (allow_empty and bool(null[null_window] > scores[window, start, end]))
    if empty:
        window, start, end = null_window, NO_ANSWER, NO_ANSWER
    candidates = context[window].clone()
    if allow_empty:
        candidates[NO_ANSWER] = True
    p_start = start_logits[window].masked_fill(~candidates, float("-inf")).softmax(-1)[start]
    p_end = end_logits[window].masked_fill(~candidates, float("-inf")).softmax(-1)[end]
    probability = float(torch.nan_to_num(p_start * p_end))  # nan: a window without context tokens
    return Span(window, start, end, probability, empty)


def characters(context: str, offsets: Sequence[Sequence[int]], start: int, end: int) -> tuple[int, int]:
    """Characters ``[start, end)`` of the context that tokens ``start..end`` cover, without surrounding spaces.

    Byte-level BPE tokens carry the space before a word (``Ġword``), and
    their offsets may include it; the answer is the text without it.
    """
    first, last = offsets[start][0], offsets[end][1]
    while first < last and context[first].isspace():
        first += 1
    while last > first and context[last - 1].isspace():
        last -= 1
    return first, last
