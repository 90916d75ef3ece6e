"""NER data: CoNLL column files, JSON lines of text with character-offset entities, and word splitting.

Both readers give rows ``{"tokens": [...], "tags": [...]}`` (one sentence a
row), the NER task's fields. JSON / JSON lines files that already hold
``tokens`` and ``tags`` lists need no reader of their own: nlpkit's ``json``
and ``jsonl`` formats read them as they are.

Raw text is cut into words two ways, for two purposes (offsets are
character offsets into the text, as Python indexes strings):

- :func:`split_words`, for predicting: where treebank-style corpora such as
  CoNLL-2003 cut (see its docstring), so that the model reads a raw text at
  the positions it was trained to read.
- :func:`split_at_punctuation`, for training data given as character spans
  (``entity-spans``): BERT's pre-tokenizer, every punctuation character a
  word of its own, so that every entity boundary falls between words.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any

from tokenizers import pre_tokenizers

from nlpkit import NlpkitError
from nlpkit_ner.schemes import is_tag, tags_from_spans

__all__ = ["FORMATS", "read_conll", "load_conll", "load_entity_spans", "split_words", "split_at_punctuation",
           "join_words", "char_spans", "word_spans"]

_SPLITTER = pre_tokenizers.BertPreTokenizer()
# Letters and full stops in turn at the end of a word: "U.S.", "a.m.", "Ph.D.", "aid-U.N." (not "Louis...").
_DOTTED = re.compile(r"(?<![^\W\d_])(?:[^\W\d_]{1,4}\.){2,}\Z")
# English clitics, which treebanks (and CoNLL-2003) write as words of their own: "Merkel 's", "do n't".
_CLITIC = re.compile(r"(?:['’](?:s|re|ve|ll|d|m)|n['’]t)\Z", re.IGNORECASE)


def split_words(text: str) -> tuple[list[str], list[list[int]]]:
    """Words of a raw text, cut where treebank-style corpora cut, and their ``[start, end)`` character offsets.

    A NER model learns a tag for each training word, read at the word's first
    subword; at any other subword it learnt nothing. Its words were cut by
    the corpus (CoNLL-2003 follows the Penn Treebank), and how a raw text is
    cut decides where the model is read. The subwords themselves are the same
    however the text is cut (the tokenizer splits ``U.S.`` into ``u . s .``
    either way), so the answer is the corpus's whenever the cuts are. BERT's
    rule (every punctuation mark a word) cuts ``U.S.`` into four words and
    reads three of them at subwords that were never word starts in training;
    cutting at whitespace alone reads ``(Reuters)`` at its ``(`` and answers
    ``Paris.`` with the full stop. So the cuts are the treebank's:

    - at whitespace, which no training word contains;
    - punctuation at either end of a word is a word of its own (``(``,
      ``Paris``, ``.``, ``,``), except a full stop that ends an abbreviation
      (``U.S.``, ``a.m.``, the initial ``J.``, ``St.``, ``Mr.``: after a
      stretch that holds a full stop itself, one letter, or a capital and a
      small letter); punctuation inside a word stays (``3.5``, ``U.S.-based``);
    - a clitic is a word of its own (``Merkel`` ``'s``, ``do`` ``n't``).

    A text written the way the corpus writes it (CoNLL's tokens joined by
    spaces) is cut into the corpus's words (99.4% of CoNLL-2003 valid.txt's;
    the others are numbers of ranked lists, ``1.``, and a few abbreviations,
    ``Corp.``), so ``predict`` answers as ``evaluate`` scores
    (``benchmarks/ner_raw_text.py``); a sentence typed with its punctuation
    attached is read as if it had been written that way.
    """
    words: list[str] = []
    offsets: list[list[int]] = []
    for run in re.finditer(r"\S+", text):
        for start, end in _cut_run(run.group()):
            words.append(run.group()[start:end])
            offsets.append([run.start() + start, run.start() + end])
    return words, offsets


def _cut_run(word: str) -> list[tuple[int, int]]:
    """``[start, end)`` of the pieces of one whitespace-free run (see :func:`split_words`)."""
    if all(_is_punctuation(c) for c in word) or _CLITIC.fullmatch(word):
        return [(0, len(word))]  # "...", "(", "'s": already a word of their own
    first, last = 0, len(word)
    leading: list[tuple[int, int]] = []
    while last - first > 1 and _is_punctuation(word[first]):
        leading.append((first, first + 1))
        first += 1
    trailing: list[tuple[int, int]] = []
    while last - first > 1 and _is_punctuation(word[last - 1]) and not _abbreviation(word[first:last]):
        piece = last - 1  # a repeated mark is one word: "..." and "!!" as in the corpora
        while piece - 1 > first and word[piece - 1] == word[last - 1]:
            piece -= 1
        trailing.insert(0, (piece, last))
        last = piece
    clitic = _CLITIC.search(word, first, last)
    if clitic is not None and clitic.start() > first:
        trailing.insert(0, (clitic.start(), last))
        last = clitic.start()
    return [*leading, (first, last), *trailing]


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def _abbreviation(word: str) -> bool:
    """Whether ``word``'s last character is the full stop of an abbreviation (``U.S.``, ``J.``, ``Mr.``)."""
    if not word.endswith("."):
        return False
    stem = word[:-1]
    return _DOTTED.search(word) is not None or (len(stem) == 1 and stem.isalpha()) or (
        len(stem) == 2 and stem[0].isupper() and stem[1].islower())


def split_at_punctuation(text: str) -> tuple[list[str], list[list[int]]]:
    """Words of a raw text and their ``[start, end)`` character offsets, as BERT's pre-tokenizer cuts.

    Every punctuation character is a word of its own: used to read training
    data given as character spans, so that an entity never begins or ends
    inside a word.
    """
    pieces = _SPLITTER.pre_tokenize_str(text)
    return [word for word, _ in pieces], [[start, end] for _, (start, end) in pieces]


def join_words(words: list[str]) -> tuple[str, list[list[int]]]:
    """The text of pre-split words joined by single spaces, and each word's offsets in it."""
    offsets, position = [], 0
    for word in words:
        offsets.append([position, position + len(word)])
        position += len(word) + 1
    return " ".join(words), offsets


def char_spans(entities: list[tuple[str, int, int]], offsets: list[list[int]]) -> list[tuple[str, int, int]]:
    """Word spans ``(type, first word, one past the last)`` -> character spans ``(type, start, end)``."""
    return [(type_, offsets[first][0], offsets[last - 1][1]) for type_, first, last in entities]


def word_spans(entities: list[tuple[str, int, int]], offsets: list[list[int]]) -> list[tuple[str, int, int]]:
    """Character spans -> word spans: each entity covers the words it overlaps (none: dropped)."""
    out = []
    for type_, start, end in entities:
        covered = [i for i, (s, e) in enumerate(offsets) if s < end and e > start]
        if covered:
            out.append((type_, covered[0], covered[-1] + 1))
    return out


def read_conll(path: str | Path, token_column: int = 0, tag_column: int = -1,
               encoding: str = "utf-8") -> dict[str, list[list[str]]]:
    """Sentences of a CoNLL column file: one token a line, blank lines between sentences.

    Columns are separated by any whitespace; ``-DOCSTART-`` lines (document
    boundaries) are skipped. Every token line must have as many columns as the
    file's first one.

    Args:
        path: the file.
        token_column: the column of the token (0: the first).
        tag_column: the column of the tag (-1: the last).
        encoding: the file's text encoding.

    Returns:
        ``{"tokens": [[...], ...], "tags": [[...], ...]}``.

    Raises:
        NlpkitError: ``FILE:LINE: what is wrong`` for a line with the wrong
            number of columns or a tag that is not a tag.
    """
    sentences: dict[str, list[list[str]]] = {"tokens": [], "tags": []}
    tokens: list[str] = []
    tags: list[str] = []
    columns, first_line = None, 0

    def close() -> None:
        if tokens:
            sentences["tokens"].append(list(tokens))
            sentences["tags"].append(list(tags))
            tokens.clear()
            tags.clear()

    try:
        handle = open(path, encoding=encoding)
    except OSError as error:
        raise NlpkitError(f"{path}: cannot read: {error.strerror}") from None
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                parts = line.split()
                if not parts or parts[0] == "-DOCSTART-":
                    close()
                    continue
                if columns is None:
                    columns, first_line = len(parts), number
                    for name, index in (("token_column", token_column), ("tag_column", tag_column)):
                        if not -columns <= index < columns:
                            raise NlpkitError(f"{path}:{number}: data.options.{name} is {index}, but the line has "
                                              f"{columns} columns")
                    if columns < 2:
                        raise NlpkitError(f"{path}:{number}: expected a token and a tag separated by whitespace, "
                                          f"got one column: {line.strip()!r}")
                if len(parts) != columns:
                    raise NlpkitError(f"{path}:{number}: expected {columns} columns (as on line {first_line}), "
                                      f"got {len(parts)}: {line.strip()!r}")
                tag = parts[tag_column]
                if not is_tag(tag):
                    raise NlpkitError(f"{path}:{number}: '{tag}' in column {tag_column % columns + 1} is not a tag "
                                      "(expected O or B-, I-, E-, S-, L-, U- and a type)")
                tokens.append(parts[token_column])
                tags.append(tag)
        except UnicodeDecodeError as error:
            raise NlpkitError(f"{path}: not {encoding} text ({error.reason}); set data.options.encoding") from None
    close()
    if not sentences["tokens"]:
        raise NlpkitError(f"{path}: no sentences (expected lines 'TOKEN ... TAG', blank lines between sentences)")
    return sentences


def _dataset_dict(rows: dict[str, dict[str, list[Any]]]) -> Any:
    import datasets

    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "tags": datasets.Sequence(datasets.Value("string"))})
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(r, features=features) for split, r in rows.items()})


def load_conll(files: dict[str, str], token_column: int = 0, tag_column: int = -1, encoding: str = "utf-8",
               **unknown: Any) -> Any:
    """The ``conll`` data format: CoNLL column files (see :func:`read_conll`); options as its arguments."""
    if unknown:
        raise NlpkitError(f"data.options: unknown option '{next(iter(unknown))}' for format conll; "
                          "known: token_column, tag_column, encoding")
    return _dataset_dict({split: read_conll(path, token_column, tag_column, encoding) for split, path in files.items()})


def _read_entity_spans(path: str, text_field: str, entities_field: str) -> dict[str, list[list[str]]]:
    rows: dict[str, list[list[str]]] = {"tokens": [], "tags": []}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise NlpkitError(f"{path}: cannot read as UTF-8 text: {error}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise NlpkitError(f"{where}: not JSON: {error.msg}") from None
        text, entities = (row.get(text_field), row.get(entities_field, [])) if isinstance(row, dict) else (None, None)
        if not isinstance(text, str) or not isinstance(entities, list):
            raise NlpkitError(f"{where}: expected an object with a '{text_field}' string and an "
                              f"'{entities_field}' list")
        spans = []
        for entity in entities:
            start, end, label = (entity.get(k) for k in ("start", "end", "label")) if isinstance(entity, dict) else (None,) * 3
            if not (isinstance(start, int) and isinstance(end, int) and isinstance(label, str) and label.strip()):
                raise NlpkitError(f"{where}: expected entities {{\"start\": int, \"end\": int, \"label\": str}}, "
                                  f"got {entity!r}")
            if not 0 <= start < end <= len(text):
                raise NlpkitError(f"{where}: entity {entity!r} lies outside the text (0..{len(text)})")
            spans.append((label.strip(), start, end))
        words, offsets = split_at_punctuation(text)
        on_words = word_spans(spans, offsets)
        if len(on_words) < len(spans):
            raise NlpkitError(f"{where}: an entity covers no word (only whitespace): {spans}")
        covered = sorted(on_words, key=lambda s: s[1])
        for (_, _, end), (label, start, _) in zip(covered, covered[1:]):
            if start < end:
                raise NlpkitError(f"{where}: entities overlap (at word '{words[start]}'); nested entities are not supported")
        rows["tokens"].append(words)
        rows["tags"].append(tags_from_spans(on_words, len(words), "iob2"))
    if not rows["tokens"]:
        raise NlpkitError(f"{path}: no lines of JSON")
    return rows


def load_entity_spans(files: dict[str, str], text_field: str = "text", entities_field: str = "entities",
                      **unknown: Any) -> Any:
    """The ``entity-spans`` data format: JSON lines ``{"text": ..., "entities": [{"start", "end", "label"}]}``.

    Texts are split into words as :func:`split_at_punctuation` does; an entity
    covers the words it overlaps. Tags come out in IOB2, so a recipe reading this
    format keeps ``ner.scheme: iob2`` (the default).
    """
    if unknown:
        raise NlpkitError(f"data.options: unknown option '{next(iter(unknown))}' for format entity-spans; "
                          "known: text_field, entities_field")
    return _dataset_dict({split: _read_entity_spans(path, text_field, entities_field) for split, path in files.items()})


FORMATS = {"conll": load_conll, "entity-spans": load_entity_spans}
