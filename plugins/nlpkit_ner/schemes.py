"""Tag schemes: reading tags into entity spans, writing spans back as tags, and what may follow what.

A tag is ``O`` or ``PREFIX-TYPE``. The schemes differ in their prefixes:

========  ===============  ==============================================
scheme    prefixes         an entity is
========  ===============  ==============================================
iob1      B I              I-X... ; B-X only starts an entity right after one of type X
iob2      B I              B-X I-X...  (also called BIO)
iobes     B I E S          B-X I-X... E-X, or S-X alone
bilou     B I L U          iobes with L for E and U for S
========  ===============  ==============================================

Reading is lenient and follows conlleval (the CoNLL shared tasks' scorer,
and ``seqeval``'s default mode): an ``I-X`` after ``O`` or after another type
starts an entity, a type switch inside a span ends it, a ``B-X`` never
followed by ``E-X`` still ends where its ``I-X`` run ends. That reading is
the same whatever the scheme, so the scheme a recipe declares decides which
prefixes are allowed (``E-PER`` in an IOB2 file is an error) and how BILOU's
``L``/``U`` are understood. IOB1 and IOB2 are read alike but written differently.

:func:`strict_spans` is ``seqeval``'s strict mode: only well-formed entities
of IOB2 or IOBES count. :func:`transitions` lists which tag may follow which,
for constrained (Viterbi) decoding.
"""

from __future__ import annotations

import re
from typing import Sequence

__all__ = ["SCHEMES", "TRAIN_SCHEMES", "TAG_PATTERN", "is_tag", "entity_type", "check_tags", "spans",
           "chunks", "strict_spans", "tags_from_spans", "scheme_tags", "transitions"]

# scheme -> its prefixes (besides O)
SCHEMES = {"iob1": "BI", "iob2": "BI", "iobes": "BIES", "bilou": "BILU"}
# The schemes a model may be trained (and so predict) in: the ones strict scoring knows.
TRAIN_SCHEMES = ("iob2", "iobes")
TAG_PATTERN = re.compile(r"O|[BIESLU]-\S+")
_BILOU_TO_IOBES = {"L": "E", "U": "S"}

Span = tuple[str, int, int]  # (type, first word, one past the last word)


def is_tag(tag: str) -> bool:
    """Whether ``tag`` looks like a tag of any scheme (``O``, ``B-PER``, ``S-LOC`` ...)."""
    return isinstance(tag, str) and TAG_PATTERN.fullmatch(tag) is not None


def entity_type(tag: str) -> str:
    """The entity type of a tag (``PER`` of ``B-PER``); '' for ``O``."""
    return tag[2:]


def check_tags(tags: Sequence[str], scheme: str) -> int | None:
    """The index of the first tag the scheme does not allow, or None when all are allowed."""
    prefixes = SCHEMES[scheme]
    for i, tag in enumerate(tags):
        if tag != "O" and not (is_tag(tag) and tag[0] in prefixes):
            return i
    return None


def chunks(tags: Sequence[str]) -> list[Span]:
    """Entity spans of a tag sequence read the conlleval way (IOB1, IOB2, IOBES tags).

    The rules, tag for tag, of ``seqeval.metrics.sequence_labeling.get_entities``
    (itself a port of conlleval's ``endOfChunk`` / ``startOfChunk``), so that
    scores computed on these spans equal ``seqeval``'s default mode.
    """
    out: list[Span] = []
    prev, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, type_ = tag[0], tag[1:].split("-", 1)[-1] or "_"
        ends = (prev in "ES" or (prev in "BI" and prefix in "BSO")
                or (prev not in "O." and prev_type != type_))
        starts = (prefix in "BS" or (prev in "ESO" and prefix in "EI")
                  or (prefix not in "O." and prev_type != type_))
        if ends:
            out.append((prev_type, begin, i))
        if starts:
            begin = i
        prev, prev_type = prefix, type_
    return out


def spans(tags: Sequence[str], scheme: str) -> list[Span]:
    """Entity spans of tags written in ``scheme``, read leniently (see the module docstring).

    Raises:
        ValueError: a tag the scheme does not allow (check with :func:`check_tags` first).
    """
    bad = check_tags(tags, scheme)
    if bad is not None:
        raise ValueError(f"tag {bad + 1} '{tags[bad]}' is not a {scheme.upper()} tag")
    if scheme == "bilou":
        tags = [_BILOU_TO_IOBES.get(t[0], t[0]) + t[1:] for t in tags]
    return chunks(tags)


def strict_spans(tags: Sequence[str], scheme: str) -> list[Span]:
    """Only the well-formed entities of an IOB2 or IOBES sequence: ``seqeval``'s strict mode.

    IOB2: ``B-X`` and the ``I-X`` that follow it (an ``I-X`` without its
    ``B-X`` is no entity). IOBES: ``S-X``, or ``B-X (I-X)* E-X``; a span
    that does not close with ``E-X`` is no entity.

    Raises:
        ValueError: a tag outside the scheme, as ``seqeval`` raises.
    """
    if scheme not in TRAIN_SCHEMES:
        raise ValueError(f"strict spans need iob2 or iobes, not {scheme}")
    for i, tag in enumerate(tags):
        if tag != "O" and tag[:1] not in SCHEMES[scheme]:
            raise ValueError(f"tag {i + 1} '{tag}' is not a {scheme.upper()} tag")
    # seqeval's Token: the type is everything after the prefix, stripped of the delimiter.
    types = [t[1:].strip("-") or "_" for t in tags]
    out: list[Span] = []
    i, n = 0, len(tags)
    while i < n:
        prefix = tags[i][0]
        if scheme == "iobes" and prefix == "S":
            out.append((types[i], i, i + 1))
            i += 1
        elif prefix == "B":
            inside = "I" if scheme == "iob2" else "IE"
            j = i + 1
            # Inside: I-X (and, in IOBES, E-X) of the same type, after B-X or I-X.
            while j < n and tags[j][0] in inside and tags[j - 1][0] in "BI" and types[j] == types[j - 1]:
                j += 1
            if scheme == "iob2" or tags[j - 1][0] == "E":
                out.append((types[i], i, j))
            i = j
        else:
            i += 1
    return out


def tags_from_spans(entities: Sequence[Span], length: int, scheme: str) -> list[str]:
    """Write non-overlapping spans over ``length`` words as tags of ``scheme``."""
    tags = ["O"] * length
    last_end: dict[int, str] = {}  # end position -> type of the span ending there (IOB1)
    for type_, start, end in sorted(entities, key=lambda s: s[1]):
        last_end[end] = type_
    for type_, start, end in sorted(entities, key=lambda s: s[1]):
        if scheme == "iob2":
            tags[start:end] = [f"B-{type_}"] + [f"I-{type_}"] * (end - start - 1)
        elif scheme == "iob1":
            first = "B" if last_end.get(start) == type_ else "I"
            tags[start:end] = [f"{first}-{type_}"] + [f"I-{type_}"] * (end - start - 1)
        else:
            single, begin, last = ("S", "B", "E") if scheme == "iobes" else ("U", "B", "L")
            if end - start == 1:
                tags[start] = f"{single}-{type_}"
            else:
                tags[start:end] = [f"{begin}-{type_}"] + [f"I-{type_}"] * (end - start - 2) + [f"{last}-{type_}"]
    return tags


def scheme_tags(types: Sequence[str], scheme: str) -> list[str]:
    """All tags of ``scheme`` over entity ``types``: ``O`` first, then each type's tags."""
    return ["O", *(f"{p}-{t}" for t in types for p in SCHEMES[scheme])]


def transitions(tags: Sequence[str], scheme: str) -> tuple[list[bool], list[list[bool]], list[bool]]:
    """Which tags may start a sentence, follow each tag, and end a sentence, in IOB2 or IOBES.

    Returns:
        ``(start, follows, end)``: ``start[j]`` tag j may come first;
        ``follows[i][j]`` tag j may follow tag i; ``end[i]`` tag i may come last.
    """
    def opens(tag: str) -> bool:  # a tag that cannot continue a span
        return tag == "O" or tag[0] in ("B" if scheme == "iob2" else "BS")

    def closes(tag: str) -> bool:  # a tag after which a span may end
        return tag == "O" or scheme == "iob2" or tag[0] in "ES"

    start = [opens(t) for t in tags]
    follows = [[closes(a) if opens(b) else (a[0] in "BI" and a[2:] == b[2:]) for b in tags] for a in tags]
    end = [closes(t) for t in tags]
    return start, follows, end
