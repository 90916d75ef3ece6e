"""Rows that hold several examples, each computed as if it were alone in its row.

A packed row carries, beside its ``input_ids`` and ``labels`` (already shifted:
``labels[i]`` is the token that follows ``input_ids[i]``), each token's
``position_ids``, restarting at 0 with every example, and ``document_ids``, the
example's number in the row (1, 2 ...). The decoder turns the document ids into
a block-diagonal causal mask for SDPA (``nlpkit.backbones.layers
.make_attention_mask``): an example's tokens attend only to its own earlier
tokens, so its logits are those it has unpacked. FlexAttention's block masks or
a variable-length kernel would skip the masked blocks' work; SDPA with an
explicit mask computes and discards it, which on a CPU costs less than the
padding packing removes, and runs everywhere torch does.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["pack_examples", "document_blocks", "shifted"]


def shifted(input_ids: Sequence[int], labels: Sequence[int], limit: int) -> tuple[list[int], list[int]]:
    """An example's model inputs (all tokens but the last) and targets (all but the first), at most ``limit``."""
    return list(input_ids[:-1][:limit]), list(labels[1:][:limit])


def _row(pieces: list[tuple[list[int], list[int]]]) -> dict[str, list[int]]:
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": [], "document_ids": []}
    for number, (inputs, targets) in enumerate(pieces, start=1):
        row["input_ids"] += inputs
        row["labels"] += targets
        row["position_ids"] += range(len(inputs))
        row["document_ids"] += [number] * len(inputs)
    return row


def pack_examples(examples: list[tuple[list[int], list[int]]], size: int) -> list[dict[str, list[int]]]:
    """Pack shifted examples (inputs, targets) into rows of at most ``size`` tokens, none split between rows.

    First-fit decreasing (longest example first, into the first row with room):
    rows come out nearly full, and the result depends only on the examples, so
    every process and every resumed run packs the same rows. An example longer
    than ``size`` must be truncated before (:func:`shifted`).
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(examples)), key=lambda i: -len(examples[i][0])):
        length = len(examples[index][0])
        if length > size:
            raise ValueError(f"example {index} has {length} tokens, more than a row's {size}")
        for number, left in enumerate(room):
            if length <= left:
                rows[number].append(index)
                room[number] -= length
                break
        else:
            rows.append([index])
            room.append(size - length)
    return [_row([examples[i] for i in row]) for row in rows]


def document_blocks(block: Sequence[int], end_of_text: int) -> dict[str, list[int]]:
    """A language-model block (``block_size + 1`` tokens of running text) whose documents do not see each other.

    Each end-of-text token opens the next document, at position 0: the model
    learns to start a document from the end-of-text token alone (as an empty
    prompt starts, in ``generate``), and to end one by predicting the token.
    """
    inputs, targets = list(block[:-1]), list(block[1:])
    positions, documents = [], []
    number, position = 1, 0
    for i, token in enumerate(inputs):
        if token == end_of_text and i > 0:
            number, position = number + 1, 0
        positions.append(position)
        documents.append(number)
        position += 1
    return {"input_ids": inputs, "labels": targets, "position_ids": positions, "document_ids": documents}
