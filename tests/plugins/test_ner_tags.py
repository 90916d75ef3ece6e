"""NER's pure parts: tag schemes, the entity metric against seqeval, readers, windows."""

from __future__ import annotations

import random
import re
import warnings

import pytest

from nlpkit import NlpkitError
from nlpkit_ner.alignment import place_words, word_windows
from nlpkit_ner.data import (
    char_spans,
    join_words,
    load_conll,
    load_entity_spans,
    read_conll,
    split_at_punctuation,
    split_words,
    word_spans,
)
from nlpkit_ner.metrics import EntityScore
from nlpkit_ner.schemes import (
    SCHEMES, check_tags, chunks, scheme_tags, spans, strict_spans, tags_from_spans, transitions,
)
from tests.helpers import SHARED

seqeval_metrics = pytest.importorskip("seqeval.metrics")
seqeval_scheme = pytest.importorskip("seqeval.scheme")

TYPES = ["LOC", "MISC", "ORG", "PER"]


def random_spans(rng: random.Random, length: int) -> list[tuple[str, int, int]]:
    out, position = [], 0
    while position < length:
        position += rng.randint(0, 3)
        end = min(length, position + rng.randint(1, 3))
        if position < end:
            out.append((rng.choice(TYPES), position, end))
        position = end
    return out


def random_sentence(rng: random.Random, prefixes: str) -> list[str]:
    """Well-formed tags in a scheme of these prefixes, then some corrupted: I- after O, type switches, stray prefixes."""
    length = rng.randint(0, 12)
    scheme = "iobes" if "E" in prefixes else "iob2"
    tags = tags_from_spans(random_spans(rng, length), length, scheme)
    for i in range(length):
        roll = rng.random()
        if roll < 0.08:
            tags[i] = "O"
        elif roll < 0.16:
            tags[i] = f"{rng.choice(prefixes)}-{rng.choice(TYPES)}"
        elif roll < 0.22 and tags[i] != "O":
            tags[i] = f"{tags[i][0]}-{rng.choice(TYPES)}"  # type switch mid-span
    return tags


def corrupt(rng: random.Random, tags: list[str], prefixes: str) -> list[str]:
    """A prediction: the gold tags with some mistakes (or a fresh random sentence of the same length)."""
    if rng.random() < 0.2:
        return [rng.choice(["O", *(f"{p}-{t}" for p in prefixes for t in TYPES)]) for _ in tags]
    return [f"{rng.choice(prefixes)}-{rng.choice(TYPES)}" if rng.random() < 0.15 else
            ("O" if rng.random() < 0.05 else t) for t in tags]


CASES = {  # name -> (prefixes, metric mode, scheme, seqeval keyword arguments)
    "default": ("BIES", "default", "iob2", {}),
    "strict-iob2": ("BI", "strict", "iob2", {"mode": "strict", "scheme": seqeval_scheme.IOB2}),
    "strict-iobes": ("BIES", "strict", "iobes", {"mode": "strict", "scheme": seqeval_scheme.IOBES}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_entity_metric_equals_seqeval_on_random_tag_sequences(case):
    prefixes, mode, scheme, seqeval_options = CASES[case]
    rng = random.Random(f"ner-metric-{case}")
    sequences = 0
    for corpus in range(500):
        gold = [random_sentence(rng, prefixes) for _ in range(rng.randint(1, 8))]
        predicted = [corrupt(rng, tags, prefixes) for tags in gold]
        sequences += len(gold)
        metrics = {value: EntityScore(TYPES, value, mode=mode, scheme=scheme)
                   for value in ("f1", "precision", "recall", *(f"f1_{t}" for t in TYPES))}
        half = len(gold) // 2  # counts add up over updates
        for metric in metrics.values():
            metric.update(predicted[:half], gold[:half])
            metric.update(predicted[half:], gold[half:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seqeval warns when a ratio divides by zero (it reports 0)
            expected = {
                "f1": seqeval_metrics.f1_score(gold, predicted, **seqeval_options),
                "precision": seqeval_metrics.precision_score(gold, predicted, **seqeval_options),
                "recall": seqeval_metrics.recall_score(gold, predicted, **seqeval_options),
            }
            report = seqeval_metrics.classification_report(gold, predicted, output_dict=True, **seqeval_options)
        expected.update({f"f1_{t}": report.get(t, {}).get("f1-score", 0.0) for t in TYPES})
        for value, metric in metrics.items():
            assert metric.compute().item() == pytest.approx(expected[value], abs=1e-6), (value, corpus, gold, predicted)
    assert sequences >= 2000


def test_metric_counts_are_fixed_size_sum_states():
    metric = EntityScore(TYPES, "f1")
    assert all(metric._reductions[name] is not None for name in ("true_positives", "predicted", "gold"))
    metric.update([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]])
    assert metric.true_positives.shape == (len(TYPES),) and metric.compute().item() == 1.0
    assert metric.scores()["f1_PER"] == 1.0 and metric.scores()["f1_LOC"] == 0.0
    with pytest.raises(ValueError, match="'DATE' is not one of"):
        metric.update([["B-DATE"]], [["O"]])


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_spans_written_in_a_scheme_read_back_the_same(scheme):
    rng = random.Random(scheme)
    for _ in range(300):
        length = rng.randint(0, 15)
        entities = random_spans(rng, length)
        tags = tags_from_spans(entities, length, scheme)
        assert check_tags(tags, scheme) is None
        assert spans(tags, scheme) == entities
        if scheme in ("iob2", "iobes"):
            assert strict_spans(tags, scheme) == entities


def test_schemes_write_their_own_tags():
    entities = [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)]
    assert tags_from_spans(entities, 5, "iob2") == ["B-PER", "I-PER", "B-PER", "O", "B-LOC"]
    assert tags_from_spans(entities, 5, "iob1") == ["I-PER", "I-PER", "B-PER", "O", "I-LOC"]
    assert tags_from_spans(entities, 5, "iobes") == ["B-PER", "E-PER", "S-PER", "O", "S-LOC"]
    assert tags_from_spans(entities, 5, "bilou") == ["B-PER", "L-PER", "U-PER", "O", "U-LOC"]
    assert scheme_tags(["LOC", "PER"], "iob2") == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_an_inside_tag_that_starts_a_span_starts_an_entity(scheme):
    # The conlleval reading in every scheme: never a crash, the span is kept.
    assert spans(["O", "I-PER", "I-PER", "O"], scheme) == [("PER", 1, 3)]
    assert spans(["I-PER", "I-LOC"], scheme) == [("PER", 0, 1), ("LOC", 1, 2)]


def test_tags_a_scheme_does_not_allow_are_found():
    assert check_tags(["O", "B-PER", "E-PER"], "iob2") == 2
    assert check_tags(["O", "B-PER", "E-PER"], "iobes") is None
    assert check_tags(["U-PER", "L-PER"], "iobes") == 0
    assert spans(["B-PER", "L-PER", "U-LOC"], "bilou") == [("PER", 0, 2), ("LOC", 2, 3)]
    with pytest.raises(ValueError, match="not a IOB2 tag"):
        spans(["S-PER"], "iob2")


@pytest.mark.parametrize("scheme", ["iob2", "iobes"])
def test_allowed_transitions_give_well_formed_sequences(scheme):
    tags = scheme_tags(TYPES, scheme)
    start, follows, end = transitions(tags, scheme)
    rng = random.Random(0)
    for _ in range(300):
        # A random walk over the allowed transitions is always well-formed: strict and lenient readings agree.
        sequence = [rng.choice([t for t, ok in zip(tags, start) if ok])]
        for _ in range(rng.randint(0, 10)):
            sequence.append(rng.choice([t for t, ok in zip(tags, follows[tags.index(sequence[-1])]) if ok]))
        if not end[tags.index(sequence[-1])]:
            continue
        assert strict_spans(sequence, scheme) == chunks(sequence)
    assert not start[tags.index("I-PER")] and follows[tags.index("B-PER")][tags.index("I-PER")]
    assert not follows[tags.index("B-LOC")][tags.index("I-PER")] and not follows[tags.index("O")][tags.index("I-PER")]


CONLL_VALID = SHARED / "data" / "conll2003" / "valid.txt"


@pytest.mark.skipif(not CONLL_VALID.is_file(), reason="needs ../shared/data/conll2003/valid.txt")
def test_conll2003_gold_tags_survive_a_trip_through_character_spans():
    sentences = read_conll(CONLL_VALID)
    assert len(sentences["tokens"]) > 3000
    for tokens, tags in zip(sentences["tokens"], sentences["tags"]):
        text, offsets = join_words(tokens)
        entities = char_spans(spans(tags, "iob2"), offsets)
        for type_, start, end in entities:
            assert text[start:end].split(" ")[0] in tokens
        assert tags_from_spans(word_spans(entities, offsets), len(tokens), "iob2") == tags


def test_conll_reader(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects\tVBZ  B-VP   O\n\n\n"
                    "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n")
    assert read_conll(path) == {"tokens": [["EU", "rejects"], ["Peter", "Blackburn"]],
                                "tags": [["B-ORG", "O"], ["B-PER", "I-PER"]]}
    # The tag may sit in another column (here the chunk tags).
    assert read_conll(path, tag_column=2)["tags"] == [["B-NP", "B-VP"], ["B-NP", "I-NP"]]
    loaded = load_conll({"train": str(path)})
    assert loaded["train"].column_names == ["tokens", "tags"] and len(loaded["train"]) == 2


@pytest.mark.parametrize("content, line, message", [
    ("EU NNP B-ORG\nrejects VBZ\n", 2, "expected 3 columns (as on line 1), got 2"),
    ("EU B-ORG\n\nrejects VERB\n", 3, "'VERB' in column 2 is not a tag"),
    ("EU B-ORG\nrejects X-ORG\n", 2, "'X-ORG' in column 2 is not a tag"),
    ("EU\n", 1, "expected a token and a tag"),
])
def test_malformed_conll_lines_are_named_by_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(NlpkitError, match=rf"^{re.escape(str(path))}:{line}: .*{re.escape(message)}"):
        read_conll(path)
    with pytest.raises(NlpkitError, match="unknown option 'delimiter' for format conll"):
        load_conll({"train": str(path)}, delimiter=" ")


def test_entity_spans_reader(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "Angela Merkel visited Paris.", "entities": [{"start": 0, "end": 13, "label": "PER"}, '
                    '{"start": 22, "end": 27, "label": "LOC"}]}\n\n{"text": "nothing here", "entities": []}\n')
    rows = load_entity_spans({"train": str(path)})["train"]
    assert rows["tokens"] == [["Angela", "Merkel", "visited", "Paris", "."], ["nothing", "here"]]
    assert rows["tags"] == [["B-PER", "I-PER", "O", "B-LOC", "O"], ["O", "O"]]
    path.write_text('{"text": "Paris", "entities": [{"start": 0, "end": 9, "label": "LOC"}]}\n')
    with pytest.raises(NlpkitError, match=rf"^{re.escape(str(path))}:1: entity .* lies outside the text"):
        load_entity_spans({"train": str(path)})
    path.write_text('{"text": "New York City", "entities": [{"start": 0, "end": 8, "label": "LOC"}, '
                    '{"start": 4, "end": 13, "label": "LOC"}]}\n')
    with pytest.raises(NlpkitError, match="entities overlap"):
        load_entity_spans({"train": str(path)})


def test_raw_text_words_keep_exact_offsets():
    text = "Zoë  met\tJosé 🎉 in São-Paulo,  naïve!"
    words, offsets = split_words(text)
    assert [text[s:e] for s, e in offsets] == words
    assert words == ["Zoë", "met", "José", "🎉", "in", "São-Paulo", ",", "naïve", "!"]
    # Training data given as character spans is cut at every punctuation mark (BERT's pre-tokenizer).
    words, offsets = split_at_punctuation(text)
    assert [text[s:e] for s, e in offsets] == words
    assert words == ["Zoë", "met", "José", "🎉", "in", "São", "-", "Paulo", ",", "naïve", "!"]


@pytest.mark.parametrize("text, words", [
    ("Angela Merkel visited the U.S. today.", ["Angela", "Merkel", "visited", "the", "U.S.", "today", "."]),
    ("(Reuters) Merkel's visit to Paris, Berlin and St. Louis...",
     ["(", "Reuters", ")", "Merkel", "'s", "visit", "to", "Paris", ",", "Berlin", "and", "St.", "Louis", "..."]),
    ('J. Smith said "no" to a 3.5% rise in aid-U.N. talks; they don\'t.',
     ["J.", "Smith", "said", '"', "no", '"', "to", "a", "3.5", "%", "rise", "in", "aid-U.N.", "talks", ";", "they",
      "do", "n't", "."]),
    ("Acme Corp. and the EU. Ph.D. students !!", ["Acme", "Corp", ".", "and", "the", "EU", ".", "Ph.D.", "students", "!!"]),
])
def test_raw_text_is_cut_where_treebanks_cut(text, words):
    # Punctuation at the edges of a word is a word, except the full stop of an abbreviation; clitics too.
    found, offsets = split_words(text)
    assert found == words
    assert [text[s:e] for s, e in offsets] == words


@pytest.mark.skipif(not CONLL_VALID.is_file(), reason="needs ../shared/data/conll2003/valid.txt")
def test_conll_sentences_written_as_spaced_text_are_cut_into_their_own_words():
    # What makes predict on raw text answer as evaluate does on CoNLL's words: the same words are read.
    kept = total = 0
    for tokens in read_conll(CONLL_VALID)["tokens"]:
        text, offsets = join_words(tokens)
        cuts = set(map(tuple, split_words(text)[1]))
        kept += sum(tuple(offset) in cuts for offset in offsets)
        total += len(tokens)
    assert kept / total > 0.99  # the others: "1." in ranked lists, ".496" averages, "Corp."


def test_windows_cover_every_word_within_the_budget():
    rng = random.Random(0)
    for _ in range(300):
        pieces = [rng.randint(1, 4) for _ in range(rng.randint(0, 40))]
        budget, overlap = rng.randint(4, 16), rng.randint(0, 8)
        ranges = word_windows(pieces, budget, overlap)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(pieces)
        for (start, end), (next_start, next_end) in zip(ranges, ranges[1:]):
            assert start < next_start <= end < next_end  # moves forward, leaves no gap
        assert all(sum(pieces[s:e]) <= budget for s, e in ranges)
        placed = place_words(pieces, ranges)
        for word, (window, position) in enumerate(placed):
            start, end = ranges[window]
            assert start <= word < end and position == sum(pieces[start:word])


def test_a_word_is_read_from_the_window_where_it_is_most_central():
    pieces = [1] * 10
    ranges = word_windows(pieces, budget=6, overlap=4)
    assert ranges == [(0, 6), (2, 8), (4, 10)]
    # Word 3 sits 2 from the edges of window 0 and 1 from those of window 1; word 4 the other way round.
    assert [window for window, _ in place_words(pieces, ranges)] == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
