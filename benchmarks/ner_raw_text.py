"""NER on raw text against NER on pre-split words: does predict answer what evaluate scores?

`nlpkit evaluate` scores a NER run on CoNLL's own words. `nlpkit predict`
gets raw text and cuts it into words itself (`nlpkit_ner.data.split_words`).
This script takes each sentence of a CoNLL file, gives it to `predict` as raw
text, compares the predicted entities as character spans with the gold ones,
and scores them with the same entity F1 (micro, over types; seqeval's
default mode, `nlpkit_ner.metrics.entity_scores`). Two raw texts per sentence:

- `spaced`: CoNLL's tokens joined by single spaces (`U.S. troops in Paris .`);
  the figure to hold within 1 point of `evaluate`'s;
- `typed`: the same tokens written as a person types them, punctuation
  attached (`U.S. troops in Paris.`, `(Reuters)`, `Merkel's`), for how far an
  answer depends on how its text is written.

Train the model first (about 12 minutes on 2 CPU cores), then, from the
repository root:

    nlpkit run recipes/ner/conll03-minilm.yaml
    python benchmarks/ner_raw_text.py runs/conll03-minilm-*

It prints the three F1 figures (evaluate, predict on spaced text, predict on
typed text) and the differences, in about 5 minutes on 2 CPU cores.
`--cut punctuation` (BERT's rule, every punctuation mark a word: what
predict did before) or `--cut whitespace` cuts the raw texts another way, for
comparison.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import nlpkit
import nlpkit_ner
from nlpkit_ner.data import read_conll, split_at_punctuation, split_words
from nlpkit_ner.metrics import entity_scores
from nlpkit_ner.schemes import chunks

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "conll2003" / "valid.txt"

# Typed text: no space before these tokens, none after the opening ones.
_CLOSING = {".", ",", ";", ":", "!", "?", ")", "]", "}", "%", "'s", "'S", "n't", "'re", "'ve", "'ll", "'d", "'m", "..."}
_OPENING = {"(", "[", "{", "$"}

Span = tuple[str, int, int]  # (type, start character, end character)


def spaced(tokens: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The tokens joined by single spaces, and each token's character offsets."""
    return _join(tokens, lambda previous, token: True)


def typed(tokens: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The tokens as a person writes them: punctuation and clitics attached, quotes around what they quote."""
    quotes = 0

    def space_before(previous: str, token: str) -> bool:
        nonlocal quotes
        if token == '"':
            quotes += 1
            return quotes % 2 == 1  # an opening quote is spaced off the word before it, a closing one is not
        if previous == '"':
            return quotes % 2 == 0  # nothing after an opening quote
        return token not in _CLOSING and previous not in _OPENING

    return _join(tokens, space_before)


def _join(tokens: list[str], space_before) -> tuple[str, list[tuple[int, int]]]:
    text, offsets = "", []
    for i, token in enumerate(tokens):
        if i and space_before(tokens[i - 1], token):
            text += " "
        offsets.append((len(text), len(text) + len(token)))
        text += token
    return text, offsets


def gold_spans(tags: list[str], offsets: list[tuple[int, int]]) -> set[Span]:
    return {(type_, offsets[first][0], offsets[last - 1][1]) for type_, first, last in chunks(tags)}


def span_f1(predicted: list[set[Span]], gold: list[set[Span]], types: list[str]) -> float:
    """Entity F1 over character spans: an entity counts when its type, start and end are right."""
    index = {t: i for i, t in enumerate(types)}
    counts = [[0] * len(types) for _ in range(3)]  # true positives, predicted, gold, per type
    for found, expected in zip(predicted, gold):
        for row, entities in enumerate((found & expected, found, expected)):
            for type_, _, _ in entities:
                counts[row][index[type_]] += 1
    return entity_scores(*counts, types)["f1"]


def predict_f1(model, sentences: dict[str, list[list[str]]], write, batch_size: int) -> float:
    texts, gold = [], []
    for tokens, tags in zip(sentences["tokens"], sentences["tags"]):
        text, offsets = write(tokens)
        texts.append(text)
        gold.append(gold_spans(tags, offsets))
    answers = model.predict(texts, batch_size=batch_size)
    predicted = []
    for text, answer in zip(texts, answers):
        spans = set()
        for entity in answer["entities"]:
            assert text[entity["start"] : entity["end"]] == entity["text"]
            spans.add((entity["label"], entity["start"], entity["end"]))
        predicted.append(spans)
    return span_f1(predicted, gold, model.task.types)


def _split_at_whitespace(text: str) -> tuple[list[str], list[list[int]]]:
    runs = list(re.finditer(r"\S+", text))
    return [run.group() for run in runs], [[run.start(), run.end()] for run in runs]


CUTS = {"treebank": split_words, "punctuation": split_at_punctuation, "whitespace": _split_at_whitespace}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a NER run folder (nlpkit run recipes/ner/conll03-minilm.yaml)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a CoNLL file (default: CoNLL-2003 valid.txt)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cut", choices=sorted(CUTS), default="treebank",
                        help="how predict cuts raw text into words (default: the plugin's own, treebank)")
    args = parser.parse_args()
    nlpkit_ner.split_words = CUTS[args.cut]  # the name the task's _words looks up

    model = nlpkit.load(args.run_dir)
    sentences = read_conll(args.data)
    figures = {"evaluate": model.evaluate(args.data, batch_size=args.batch_size)["f1"]}
    figures["predict_spaced"] = predict_f1(model, sentences, spaced, args.batch_size)
    figures["predict_typed"] = predict_f1(model, sentences, typed, args.batch_size)
    print(f"{len(sentences['tokens'])} sentences of {args.data}, run {args.run_dir}, raw text cut: {args.cut}")
    print(f"  evaluate on CoNLL's words        F1 {figures['evaluate']:.4f}")
    for name, label in (("predict_spaced", "predict on spaced raw text"), ("predict_typed", "predict on typed raw text")):
        difference = 100 * (figures[name] - figures["evaluate"])
        print(f"  {label:32} F1 {figures[name]:.4f}  ({difference:+.2f} points)")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
