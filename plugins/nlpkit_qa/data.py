"""Question-answering data: the two layouts of a row's answers, and the official SQuAD JSON (``squad`` format).

A row holds ``question`` and ``context`` and, in training and evaluation
data, its gold answers in one of two layouts:

- SQuAD-style, one ``answers`` column: ``{"text": [...], "answer_start": [...]}``
  (Hugging Face's ``squad`` datasets) or a list of ``{"text", "answer_start"}``
  objects (the official JSON's); empty lists for a question without an answer
  (SQuAD v2, ``qa.allow_empty``);
- flat, two columns: ``answer`` (the text) and ``answer_start`` (a character
  offset into ``context``); one answer per row, never empty (nlpkit rejects
  empty cells), so unanswerable questions need the ``answers`` layout.

The ``squad`` format reads the official nested file::

    data:
      format: squad
      train: dev-v1.1.json
      validation: dev-v1.1.json
      options: {articles: {train: "0:20", validation: "20:24"}}

into rows ``id, title, question, context, answers`` (SQuAD-style).
``articles`` picks articles with a Python slice of the file's list of
articles: one slice for every split (``"0:20"``) or one per split; a split
that the mapping does not name reads every article.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nlpkit import NlpkitError

__all__ = ["FORMATS", "ANSWER_COLUMNS", "Gold", "gold_answers", "check_answers", "load_squad", "parse_articles"]

ANSWER_COLUMNS = ("answers", "answer", "answer_start")
SPLITS = ("train", "validation", "test")
_SLICE = re.compile(r"\s*(-?\d+)?\s*:\s*(-?\d+)?\s*(?::\s*(-?\d+)?\s*)?")
_VERSION = "nlpkit-squad-1"  # part of the cache fingerprint: change it when the rows change

# One example's answer texts and their character offsets; an unanswered question's are [""] and [-1],
# its gold answer in SQuAD v2's official scoring (and one type for every row of a feature column).
Gold = tuple[list[str], list[int]]


# -- a row's answers ------------------------------------------------------------


def _as_int(value: Any) -> int | None:
    """An offset: an int, or the digits of one (select_columns reads optional columns as text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


def _squad_style(value: Any) -> tuple[list[Any], list[Any]] | None:
    """Texts and starts of an ``answers`` cell, None when it has neither accepted shape."""
    if value is None:
        return [], []
    if isinstance(value, Mapping) and "text" in value and "answer_start" in value:
        texts, starts = value["text"], value["answer_start"]
        texts = texts if isinstance(texts, list) else [texts]
        starts = starts if isinstance(starts, list) else [starts]
        return (texts, starts) if len(texts) == len(starts) else None
    if isinstance(value, list) and all(isinstance(a, Mapping) and "text" in a and "answer_start" in a for a in value):
        return [a["text"] for a in value], [a["answer_start"] for a in value]
    return None


def _row_gold(examples: Mapping[str, Sequence[Any]], row: int) -> tuple[list[Any], list[Any]] | None:
    if "answers" in examples:
        return _squad_style(examples["answers"][row])
    return [examples["answer"][row]], [examples["answer_start"][row]]


def layout(columns: Sequence[str]) -> str | None:
    """``answers``, ``flat`` or None (no answers: prediction inputs)."""
    if "answers" in columns:
        return "answers"
    if "answer" in columns and "answer_start" in columns:
        return "flat"
    return None


def gold_answers(examples: Mapping[str, Sequence[Any]]) -> list[Gold] | None:
    """Each example's gold answers (texts, starts) from either layout; None when the examples hold none.

    Assumes rows that :func:`check_answers` accepted.
    """
    if layout(list(examples)) is None:
        return None
    out: list[Gold] = []
    for row in range(len(examples["context"])):
        texts, starts = _row_gold(examples, row) or ([], [])
        out.append(([str(t) for t in texts], [int(_as_int(s) or 0) for s in starts]) if texts else ([""], [-1]))
    return out


def check_answers(where: str, dataset: Any, allow_empty: bool) -> None:
    """Refuse rows whose answers are malformed or do not match their context, naming the row.

    Raises:
        NlpkitError: no answer columns, a cell of neither shape, an offset
            outside the context, a text that is not the context's at its
            offset, or an unanswered question without ``qa.allow_empty``.
    """
    columns = list(dataset.column_names)
    if layout(columns) is None:
        half = next((c for c in ("answer", "answer_start") if c in columns), None)
        found = f"'{half}' without '{'answer_start' if half == 'answer' else 'answer'}'" if half else "no answer column"
        raise NlpkitError(f"{where}: {found}; expected an 'answers' column ({{\"text\": [...], \"answer_start\": "
                          f"[...]}}) or 'answer' and 'answer_start' columns (set data.columns.answers ...)")
    examples = {c: dataset[c] for c in ("context", *ANSWER_COLUMNS) if c in columns}
    for row, context in enumerate(examples["context"]):
        name = f"{where}: row {row + 1}"
        parsed = _row_gold(examples, row)
        if parsed is None:
            raise NlpkitError(f"{name}: 'answers' must be {{\"text\": [...], \"answer_start\": [...]}} with as many "
                              f"offsets as texts, or a list of {{\"text\", \"answer_start\"}}; got "
                              f"{examples['answers'][row]!r:.80}")
        texts, starts = parsed
        if not texts and not allow_empty:
            raise NlpkitError(f"{name}: no answer; questions without one (SQuAD v2) need qa.allow_empty: true")
        for text, start in zip(texts, starts):
            problem = answer_problem(context, text, start)
            if problem:
                raise NlpkitError(f"{name}: {problem}")


def answer_problem(context: str, text: Any, start: Any) -> str | None:
    """What is wrong with one gold answer of ``context``, or None."""
    offset = _as_int(start)
    if not isinstance(text, str) or not text:
        return f"expected a non-empty answer text, got {text!r}"
    if offset is None:
        return f"answer_start must be a character offset (an integer), got {start!r}"
    if not 0 <= offset <= len(context) - len(text):
        return (f"answer_start {offset} of the answer {text!r:.40} lies outside the context "
                f"({len(context)} characters)")
    found = context[offset: offset + len(text)]
    if found != text:
        return f"the context at answer_start {offset} reads {found!r:.60}, not the answer {text!r:.60}"
    return None


# -- the squad format -----------------------------------------------------------


def _slice_of(value: Any, key: str) -> slice:
    match = _SLICE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise NlpkitError(f"{key}: expected a slice of the file's articles such as '0:20' (Python's start:stop"
                          f"[:step]), or a mapping of split to slice ({{train: '0:20', validation: '20:24'}}); "
                          f"got {value!r}")
    start, stop, step = (None if part is None else int(part) for part in match.groups())
    if step == 0:
        raise NlpkitError(f"{key}: the step of '{value}' is 0; expected a slice such as '0:20' or '::2'")
    return slice(start, stop, step)


def _text(chosen: slice) -> str:
    parts = ["" if v is None else str(v) for v in (chosen.start, chosen.stop, chosen.step)]
    return ":".join(parts if parts[2] else parts[:2])


def parse_articles(articles: Any) -> dict[str, slice]:
    """``data.options.articles`` -> a slice per split (a split left out reads every article).

    Raises:
        NlpkitError: naming ``data.options.articles`` (or its split's key) and what was expected.
    """
    key = "data.options.articles"
    if articles is None:
        return {}
    if isinstance(articles, Mapping):
        unknown = [str(s) for s in articles if s not in SPLITS]
        if unknown:
            raise NlpkitError(f"{key}: unknown split '{unknown[0]}'; expected slices for {', '.join(SPLITS)}")
        return {str(split): _slice_of(value, f"{key}.{split}") for split, value in articles.items()}
    chosen = _slice_of(articles, key)
    return {split: chosen for split in SPLITS}


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise NlpkitError(f"{path}: cannot read: {error.strerror}") from None


def _squad_rows(path: str, content: bytes, chosen: slice) -> list[dict[str, Any]]:
    """The questions of the chosen articles of an official SQuAD file (its bytes: ``content``), checked."""
    try:
        document = json.loads(content.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise NlpkitError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise NlpkitError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    articles = document.get("data") if isinstance(document, dict) else None
    if not isinstance(articles, list):
        raise NlpkitError(f"{path}: expected SQuAD JSON, {{\"data\": [{{\"title\", \"paragraphs\": [{{\"context\", "
                          f"\"qas\": [...]}}]}}]}}; got no 'data' list")
    indices = range(len(articles))[chosen]
    if not indices:
        raise NlpkitError(f"{path}: data.options.articles '{_text(chosen)}' selects none of its "
                          f"{len(articles)} articles")
    rows: list[dict[str, Any]] = []
    for a in indices:
        article = articles[a]
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise NlpkitError(f"{path}: data[{a}]: expected an article {{\"title\", \"paragraphs\": [...]}}")
        title = str(article.get("title", ""))
        for p, paragraph in enumerate(paragraphs):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            qas = paragraph.get("qas", []) if isinstance(paragraph, dict) else None
            if not isinstance(context, str) or not isinstance(qas, list):
                raise NlpkitError(f"{where}: expected {{\"context\": str, \"qas\": [...]}}")
            for q, qa in enumerate(qas):
                question = qa.get("question") if isinstance(qa, dict) else None
                if not isinstance(question, str) or not question.strip():
                    raise NlpkitError(f"{where}.qas[{q}]: expected {{\"id\", \"question\": str, \"answers\": [...]}}")
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                if not isinstance(answers, list):
                    raise NlpkitError(f"{where}.qas[{q}]: 'answers' must be a list of {{\"text\", \"answer_start\"}}")
                texts, starts = [], []
                for n, answer in enumerate(answers):
                    text = answer.get("text") if isinstance(answer, dict) else None
                    start = answer.get("answer_start") if isinstance(answer, dict) else None
                    problem = answer_problem(context, text, start)
                    if problem:
                        raise NlpkitError(f"{where}.qas[{q}] (id {qa.get('id')}): answer {n + 1}: {problem}")
                    texts.append(text)
                    starts.append(int(start))  # type: ignore[arg-type]  # checked just above
                rows.append({"id": str(qa.get("id", f"{a}-{p}-{q}")), "title": title, "question": question,
                             "context": context, "answers": {"text": texts, "answer_start": starts}})
    return rows


def _squad_split(path: str, split: str, chosen: slice) -> Any:
    import datasets

    content = _read(path)  # read once: parsed for the rows, hashed for the cache's name
    rows = _squad_rows(path, content, chosen)
    features = datasets.Features({
        "id": datasets.Value("string"), "title": datasets.Value("string"),
        "question": datasets.Value("string"), "context": datasets.Value("string"),
        "answers": {"text": datasets.Sequence(datasets.Value("string")),
                    "answer_start": datasets.Sequence(datasets.Value("int32"))},
    })
    # Arrow files in datasets' cache, named by the file's bytes and the slice: the same file and
    # articles are read from the cache (so is every later map of them), a changed file is read anew.
    digest = hashlib.sha256(content)
    digest.update(f"{_VERSION}|{chosen.start}|{chosen.stop}|{chosen.step}|{split}".encode())
    return datasets.Dataset.from_generator(lambda: iter(rows), features=features, split=datasets.NamedSplit(split),
                                           fingerprint=digest.hexdigest()[:32])


def load_squad(files: dict[str, str], articles: Any = None, **unknown: Any) -> Any:
    """The ``squad`` data format: official SQuAD JSON (v1.1 or v2.0) -> rows id, title, question, context, answers.

    Args:
        files: split -> path.
        articles: a slice string (``"0:20"``) for every split, or a mapping of
            split to slice; Python slice semantics on the file's articles.

    Raises:
        NlpkitError: an unknown option, a bad slice, a file that is not SQuAD
            JSON, or an answer that is not the context's text at its offset
            (naming the file and the JSON path of the question).
    """
    import datasets

    if unknown:
        raise NlpkitError(f"data.options: unknown option '{next(iter(unknown))}' for format squad; known: articles")
    slices = parse_articles(articles)
    return datasets.DatasetDict({split: _squad_split(path, split, slices.get(split, slice(None)))
                                 for split, path in files.items()})


FORMATS = {"squad": load_squad}
