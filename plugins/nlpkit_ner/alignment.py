"""Words to subword windows and back: nothing of a long sentence is cut, every word is read once.

A sentence whose subwords do not fit the model's length is cut into windows
that overlap; windows start and end on word boundaries, so each word lies
whole in a window. A word seen by several windows is read from the one where
it sits most centrally (its first subword farthest from both window edges):
there it has the most context on both sides, as in BERT's SQuAD sliding windows.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["word_windows", "place_words"]


def word_windows(pieces: Sequence[int], budget: int, overlap: int) -> list[tuple[int, int]]:
    """Word ranges ``[start, end)`` of windows holding at most ``budget`` subwords each.

    Args:
        pieces: each word's number of subwords (>= 1, at most ``budget``).
        budget: subwords a window may hold (the model's length less its special tokens).
        overlap: about how many subwords consecutive windows share (whole
            words; less when the words do not fit, and always at least one
            new word per window).

    Returns:
        The windows, in order; one empty window ``(0, 0)`` for no words.
    """
    if not pieces:
        return [(0, 0)]
    ranges = []
    start = 0
    while True:
        end, used = start, 0
        while end < len(pieces) and used + pieces[end] <= budget:
            used += pieces[end]
            end += 1
        ranges.append((start, end))
        if end == len(pieces):
            return ranges
        # Step back from the end over whole words while they fit the overlap and leave room for the
        # next word, so that every window moves forward and brings at least one new word.
        next_start, shared, room = end, 0, min(overlap, budget - pieces[end])
        while next_start - 1 > start and shared + pieces[next_start - 1] <= room:
            next_start -= 1
            shared += pieces[next_start]
        start = next_start


def place_words(pieces: Sequence[int], ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """For each word, the window it is read from and its first subword's position there.

    Positions count from the window's first subword (add the leading special
    token yourself). Among the windows holding a word, the one where the
    word's first subword is farthest from the nearer window edge wins; ties
    go to the earlier window.
    """
    best: list[tuple[int, int, int]] = [(-1, -1, -1)] * len(pieces)  # (centrality, window, position)
    for window, (start, end) in enumerate(ranges):
        length = sum(pieces[start:end])
        position = 0
        for word in range(start, end):
            centrality = min(position, length - 1 - position)
            if centrality > best[word][0]:
                best[word] = (centrality, window, position)
            position += pieces[word]
    return [(window, position) for _, window, position in best]
