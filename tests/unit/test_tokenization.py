"""Tests for nlpkit.tokenization: training, special-token roles, truncation, save/load, parity with transformers."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from nlpkit import NlpkitError
from nlpkit.tokenization import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Tokenizer

MINILM = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "all-minilm-l6-v2"

SUBJECTS = "the cat|a dog|my neighbour|the old teacher|our team|the café owner|a naïve student|the river".split("|")
VERBS = "sees|likes|painted|found|carried|ignored|visited|remembered|wrote about|walked past".split("|")
OBJECTS = "the house|a red ball|seven apples|the résumé|his bicycle|the mountain|an email|the garden".split("|")
TAILS = ["yesterday.", "in 1998!", "at 3:45 pm?", "quickly, then left.", "with joy 😀", "— again.", "(twice)", "near Zürich."]


def make_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Varied sentences: mixed case, accents, numbers, punctuation, some emoji and CJK."""
    rng = random.Random(seed)
    corpus = []
    for i in range(n):
        words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(TAILS)]
        sentence = " ".join(words)
        if rng.random() < 0.3:
            sentence = sentence.capitalize()
        if rng.random() < 0.1:
            sentence = sentence.upper()
        if i % 25 == 0:
            sentence += " 東京 日本語"
        corpus.append(sentence + f" {rng.randint(0, 10_000)}")
    return corpus


CORPUS = make_corpus()
LONG_TEXT = " ".join(make_corpus(60, seed=7))  # far more than any max_length below
# Longer than the max_lengths below, but short enough that pair truncation (whose overflow
# bookkeeping in `tokenizers` grows with the product of both lengths) stays fast.
MEDIUM_TEXT = " ".join(make_corpus(4, seed=8))

# ~30 sentences a user might encode, trained-on or not.
SENTENCES = [
    "The cat sees the house yesterday.",
    "A NAÏVE STUDENT WROTE ABOUT THE RÉSUMÉ",
    "Crème brûlée à la façon de Zürich, s'il vous plaît.",
    "東京は日本の首都です。",
    "我喜欢自然语言处理",
    "한국어 문장도 있습니다",
    "Emoji time 😀🎉👍🏽 and 🇫🇷 flags",
    "Numbers: 3.14159, 1,000,000 and -42 or 0x1F.",
    "Dates like 2024-01-31 and 12/25/1999 at 23:59:59",
    "e-mail me at someone@example.com or visit https://example.org/path?q=1",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nmixed",
    "ALL CAPS SENTENCE WITH NUMBERS 123",
    "mIxEd CaSe WoRdS",
    "Punctuation!!! ??? ... ;;; ---",
    "quotes \"double\" and 'single' and `back`",
    "unknownwordthatisverylongandneverseenbeforeinthecorpus",
    "Ωμέγα και άλφα",
    "Привет, как дела?",
    "مرحبا بالعالم",
    "naïve café résumé coöperate",
    "the the the the the",
    "a",
    "",
    "Über straße Ångström",
    "math: x² + y² = z², α β γ",
    "currency: $5, €10, £20, ¥1000",
    "The river remembered seven apples in 1998!",
    "my neighbour walked past an email — again.",
    LONG_TEXT,
]


def train(kind: str, **options) -> Tokenizer:
    defaults = {"vocab_size": 400, "min_frequency": 2, "max_length": 32}
    return Tokenizer.train(CORPUS, kind=kind, **{**defaults, **options})


def ids(tokenizer: Tokenizer, texts: list[str], pairs: list[str] | None = None) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(texts, pairs)]


@pytest.fixture(scope="module")
def wordpiece() -> Tokenizer:
    return train("wordpiece")


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train("bpe")


@pytest.fixture(scope="module", params=["wordpiece", "bpe"])
def trained(request: pytest.FixtureRequest, wordpiece: Tokenizer, bpe: Tokenizer) -> Tokenizer:
    return {"wordpiece": wordpiece, "bpe": bpe}[request.param]


# -- training and special tokens ---------------------------------------------------------------------------------


def test_wordpiece_special_tokens_have_their_roles(wordpiece: Tokenizer) -> None:
    vocab = wordpiece.backend.get_vocab()
    for role, token in {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}.items():
        assert wordpiece.token_id(role) == vocab[token], role
    assert wordpiece.pad_token_id == vocab["[PAD]"]
    assert wordpiece.token_id("bos") is None and wordpiece.token_id("eos") is None
    encoded = wordpiece.encode_batch(["the cat sees the house"])[0]
    assert encoded.ids[0] == wordpiece.token_id("cls")
    assert encoded.ids[-1] == wordpiece.token_id("sep")
    assert wordpiece.token_id("pad") not in encoded.ids  # no padding


def test_bpe_special_tokens_have_their_roles(bpe: Tokenizer) -> None:
    vocab = bpe.backend.get_vocab()
    for role, token in {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>", "mask": "<mask>"}.items():
        assert bpe.token_id(role) == vocab[token], role
    # RoBERTa convention: <s> and </s> double as classification and separator tokens.
    assert bpe.token_id("cls") == bpe.token_id("bos")
    assert bpe.token_id("sep") == bpe.token_id("eos")
    encoded = bpe.encode_batch(["the cat sees the house"])[0]
    assert encoded.ids[0] == bpe.token_id("bos")
    assert encoded.ids[-1] == bpe.token_id("eos")
    assert bpe.token_id("pad") not in encoded.ids


def test_special_token_ids_are_distinct(trained: Tokenizer) -> None:
    roles = {"pad", "unk", "cls", "sep", "mask"}
    assert len({trained.token_id(role) for role in roles}) == len(roles)


@pytest.mark.parametrize("kind, requested", [("wordpiece", 150), ("wordpiece", 400), ("bpe", 300), ("bpe", 400)])
def test_vocab_size_is_bounded_by_the_request(kind: str, requested: int) -> None:
    tokenizer = train(kind, vocab_size=requested)
    assert len(set(tokenizer.special_tokens.values())) < tokenizer.vocab_size <= requested


def test_a_larger_vocabulary_gives_shorter_encodings(trained: Tokenizer) -> None:
    kind = "wordpiece" if "[CLS]" in trained.special_tokens.values() else "bpe"
    small = train(kind, vocab_size=300 if kind == "bpe" else 120)
    assert small.vocab_size < trained.vocab_size
    text = ["the old teacher remembered the mountain yesterday."]
    assert len(ids(trained, text)[0]) < len(ids(small, text)[0])


def test_byte_level_bpe_decodes_back_to_the_text() -> None:
    cased = train("bpe", lowercase=False, max_length=512)
    for text in SENTENCES[:-1]:
        assert cased.decode(ids(cased, [text])[0]) == text
    # Nothing is unknown to a byte-level vocabulary.
    assert cased.token_id("unk") not in [i for row in ids(cased, SENTENCES) for i in row]


# -- truncation and pairs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [8, 32])
def test_truncates_to_max_length(max_length: int) -> None:
    for kind in ("wordpiece", "bpe"):
        tokenizer = train(kind, max_length=max_length)
        assert tokenizer.max_length == max_length
        single = ids(tokenizer, [LONG_TEXT])[0]
        assert len(single) == max_length
        assert single[0] == tokenizer.token_id("cls") and single[-1] == tokenizer.token_id("sep")
        pair = ids(tokenizer, [MEDIUM_TEXT], [MEDIUM_TEXT])[0]
        assert len(pair) == max_length
        assert pair[-1] == tokenizer.token_id("sep")
        short = ids(tokenizer, ["a dog"])[0]
        assert len(short) < max_length  # short texts are not padded up


def test_wordpiece_pair_has_segment_ids(wordpiece: Tokenizer) -> None:
    first, second = "the cat sees the house", "a dog found seven apples in 1998!"
    a = wordpiece.encode_batch([first], add_special_tokens=False)[0].ids
    b = wordpiece.encode_batch([second], add_special_tokens=False)[0].ids
    encoded = wordpiece.encode_batch([first], [second])[0]
    cls_id, sep_id = wordpiece.token_id("cls"), wordpiece.token_id("sep")
    assert encoded.ids == [cls_id, *a, sep_id, *b, sep_id]
    assert encoded.type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1)


def test_truncated_pair_keeps_both_segments(wordpiece: Tokenizer) -> None:
    encoded = wordpiece.encode_batch([LONG_TEXT], [LONG_TEXT])[0]
    assert len(encoded.ids) == wordpiece.max_length
    assert encoded.ids.count(wordpiece.token_id("sep")) == 2
    assert 0 in encoded.type_ids and 1 in encoded.type_ids


def test_bpe_pair_uses_roberta_template(bpe: Tokenizer) -> None:
    a = bpe.encode_batch(["the cat"], add_special_tokens=False)[0].ids
    b = bpe.encode_batch(["a dog"], add_special_tokens=False)[0].ids
    bos, eos = bpe.token_id("bos"), bpe.token_id("eos")
    assert ids(bpe, ["the cat"], ["a dog"])[0] == [bos, *a, eos, eos, *b, eos]


# -- one text, pre-split words, windows, the template -----------------------------------------------------------


def test_encode_one_text_or_pair_is_the_batch_of_one(trained: Tokenizer) -> None:
    assert trained.encode(SENTENCES[0]).ids == ids(trained, [SENTENCES[0]])[0]
    assert trained.encode("the cat", "a dog").ids == ids(trained, ["the cat"], ["a dog"])[0]
    assert len(trained.encode(LONG_TEXT).ids) == trained.max_length
    assert len(trained.encode(LONG_TEXT, truncation=False).ids) > trained.max_length


def test_pre_split_words_say_which_word_each_token_comes_from(wordpiece: Tokenizer) -> None:
    words = ["The", "café", "owner", "visited", "Zürich,", "unknownwordthatisverylong", ""]
    (encoded,) = wordpiece.encode_words([words], add_special_tokens=False, truncation=False)
    # The same tokens as the words joined by spaces; none straddles two words, an empty word has none.
    assert encoded.ids == wordpiece.encode(" ".join(words), add_special_tokens=False).ids
    assert sorted(set(encoded.word_ids)) == list(range(len(words) - 1))
    assert encoded.word_ids == sorted(encoded.word_ids)
    # Offsets are inside each word: its tokens tile it from its first character to its last.
    for index, word in enumerate(words[:-1]):
        spans = [offset for w, offset in zip(encoded.word_ids, encoded.offsets) if w == index]
        assert spans[0][0] == 0 and spans[-1][1] == len(word)
        assert all(end == start for (_, end), (start, _) in zip(spans, spans[1:]))
    with_specials = wordpiece.encode_words([words])[0]
    assert with_specials.word_ids[0] is None and with_specials.word_ids[-1] is None
    assert with_specials.ids[1:-1] == encoded.ids[: wordpiece.max_length - 2]


@pytest.mark.parametrize("stride", [0, 3, 8])
def test_windows_cover_the_whole_second_text(trained: Tokenizer, stride: int) -> None:
    question, context = "who found the apples?", MEDIUM_TEXT
    windows = trained.encode_windows([question, "a dog"], [context, "the cat"], stride=stride)
    # The windows' truncation does not stay behind in the tokenizer (nor in the tokenizer.json save() writes).
    assert trained.backend.truncation == {"max_length": trained.max_length, "stride": 0, "strategy": "longest_first",
                                          "direction": "right"}
    assert len(windows[1]) == 1 and windows[1][0].ids == ids(trained, ["a dog"], ["the cat"])[0]
    whole = trained.encode(context, add_special_tokens=False, truncation=False)
    asked = trained.encode(question, add_special_tokens=False).ids
    pieces = []
    for window in windows[0]:
        assert len(window.ids) <= trained.max_length
        first = [t for t, seq in zip(window.ids, window.sequence_ids) if seq == 0]
        assert first == asked  # every window asks the whole question
        pieces.append([(t, o) for t, o, seq in zip(window.ids, window.offsets, window.sequence_ids) if seq == 1])
    assert len(pieces) > 2
    for before, after in zip(pieces, pieces[1:]):
        assert before[len(before) - stride :] == after[:stride]  # consecutive windows share `stride` tokens
    covered = pieces[0] + [token for piece in pieces[1:] for token in piece[stride:]]
    assert covered == list(zip(whole.ids, whole.offsets))  # nothing lost, offsets into the original context


def test_windows_equal_transformers_overflowing_tokens(wordpiece: Tokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    wordpiece.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path), local_files_only=True)
    questions, contexts = ["who found the apples?", "where?"], [MEDIUM_TEXT, SENTENCES[2]]
    expected = hf(questions, contexts, truncation="only_second", max_length=24, stride=5,
                  return_overflowing_tokens=True, return_offsets_mapping=True)
    ours = [w for pair in wordpiece.encode_windows(questions, contexts, stride=5, max_length=24) for w in pair]
    assert [w.ids for w in ours] == expected["input_ids"]
    assert [w.offsets for w in ours] == [[tuple(o) for o in row] for row in expected["offset_mapping"]]
    assert [w.sequence_ids for w in ours] == [expected.sequence_ids(i) for i in range(len(ours))]


def test_windows_refuse_a_first_text_that_leaves_no_room(wordpiece: Tokenizer) -> None:
    with pytest.raises(NlpkitError, match=r"text 2: .* leave 0 of the 32 tokens .* more than the stride \(4\)"):
        wordpiece.encode_windows(["who?", LONG_TEXT], ["a dog", "a dog"], stride=4)
    with pytest.raises(NlpkitError, match=r"more than the stride \(8\)"):
        wordpiece.encode_windows(["the old teacher remembered the mountain yesterday"], [MEDIUM_TEXT], stride=8,
                                 max_length=16)
    with pytest.raises(NlpkitError, match="stride: expected an integer >= 0"):
        wordpiece.encode_windows(["who?"], ["a dog"], stride=-1)


def test_the_template_turns_off_and_on_and_is_saved_off(tmp_path: Path) -> None:
    tokenizer = train("bpe")
    bare = tokenizer.encode("the cat", add_special_tokens=False).ids
    assert tokenizer.has_template and tokenizer.encode("the cat").ids == [tokenizer.token_id("bos"), *bare,
                                                                          tokenizer.token_id("eos")]
    tokenizer.set_template(False)
    assert not tokenizer.has_template and tokenizer.encode("the cat").ids == bare
    tokenizer.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)  # a run folder keeps it off
    assert ids(loaded, SENTENCES) == [e.ids for e in tokenizer.encode_batch(SENTENCES, add_special_tokens=False)]
    with pytest.raises(NlpkitError, match="no special-token template to turn on"):
        loaded.set_template(True)
    tokenizer.set_template(True)
    assert tokenizer.encode("the cat").ids == [tokenizer.token_id("bos"), *bare, tokenizer.token_id("eos")]


# -- lower-casing -----------------------------------------------------------------------------------------------------


def test_wordpiece_lowercase_folds_case_and_accents() -> None:
    lower = train("wordpiece", lowercase=True)
    assert ids(lower, ["THE CAFÉ OWNER Visited Zürich"]) == ids(lower, ["the cafe owner visited zurich"])
    cased = train("wordpiece", lowercase=False)
    assert ids(cased, ["THE CAFÉ OWNER"]) != ids(cased, ["the cafe owner"])
    assert ids(cased, ["café"]) != ids(cased, ["cafe"])


def test_bpe_lowercase_folds_case_only() -> None:
    lower = train("bpe", lowercase=True)
    assert ids(lower, ["THE Café Owner"]) == ids(lower, ["the café owner"])
    assert ids(lower, ["café"]) != ids(lower, ["cafe"])  # byte-level BPE keeps accents
    cased = train("bpe", lowercase=False)
    assert ids(cased, ["THE CAFÉ OWNER"]) != ids(cased, ["the café owner"])


# -- save and load ----------------------------------------------------------------------------------------------------


def test_save_then_load_round_trip(trained: Tokenizer, tmp_path: Path) -> None:
    trained.save(tmp_path)
    assert (tmp_path / TOKENIZER_FILE).is_file() and (tmp_path / TOKENIZER_CONFIG_FILE).is_file()
    for loaded in (Tokenizer.load(tmp_path), Tokenizer.from_file(tmp_path / TOKENIZER_FILE)):
        assert loaded.special_tokens == trained.special_tokens
        for role in ("pad", "unk", "cls", "sep", "mask", "bos", "eos"):
            assert loaded.token_id(role) == trained.token_id(role), role
        assert loaded.max_length == trained.max_length == 32
        assert loaded.vocab_size == trained.vocab_size
        assert ids(loaded, SENTENCES) == ids(trained, SENTENCES)
        pairs = [e.ids for e in loaded.encode_batch(SENTENCES, SENTENCES[::-1])]
        assert pairs == [e.ids for e in trained.encode_batch(SENTENCES, SENTENCES[::-1])]


def test_save_into_a_new_folder(wordpiece: Tokenizer, tmp_path: Path) -> None:
    folder = tmp_path / "new" / "tokenizer"
    wordpiece.save(folder)
    assert ids(Tokenizer.load(folder), SENTENCES) == ids(wordpiece, SENTENCES)


def test_max_length_comes_from_tokenizer_config(tmp_path: Path) -> None:
    train("wordpiece", max_length=20).save(tmp_path)
    assert json.loads((tmp_path / TOKENIZER_CONFIG_FILE).read_text())["model_max_length"] == 20
    assert Tokenizer.load(tmp_path).max_length == 20
    assert len(ids(Tokenizer.load(tmp_path), [LONG_TEXT])[0]) == 20
    # An explicit max_length wins over the saved one.
    override = Tokenizer.from_file(tmp_path / TOKENIZER_FILE, max_length=12)
    assert override.max_length == 12
    assert len(ids(override, [LONG_TEXT])[0]) == 12


def test_transformers_sentinel_length_falls_back(tmp_path: Path) -> None:
    train("wordpiece").save(tmp_path)
    config = json.loads((tmp_path / TOKENIZER_CONFIG_FILE).read_text())
    config["model_max_length"] = 1e30  # what transformers writes for "unknown"
    (tmp_path / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config))
    assert Tokenizer.load(tmp_path).max_length == 512


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("wordpiece", {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}),
        (
            "bpe",
            {"pad": "<pad>", "unk": "<unk>", "cls": "<s>", "sep": "</s>", "mask": "<mask>", "bos": "<s>", "eos": "</s>"},
        ),
    ],
)
def test_from_file_without_config_finds_well_known_tokens(
    kind: str, expected: dict[str, str], wordpiece: Tokenizer, bpe: Tokenizer, tmp_path: Path
) -> None:
    original = {"wordpiece": wordpiece, "bpe": bpe}[kind]
    original.save(tmp_path)
    (tmp_path / "bare").mkdir()
    shutil.copy(tmp_path / TOKENIZER_FILE, tmp_path / "bare" / TOKENIZER_FILE)
    loaded = Tokenizer.from_file(tmp_path / "bare" / TOKENIZER_FILE)
    assert loaded.special_tokens == expected
    assert loaded.token_id("pad") == original.token_id("pad")
    assert loaded.max_length == 512
    assert len(ids(loaded, [LONG_TEXT])[0]) == 512
    same_length = Tokenizer.from_file(tmp_path / "bare" / TOKENIZER_FILE, max_length=original.max_length)
    assert same_length.special_tokens == expected
    assert ids(same_length, SENTENCES) == ids(original, SENTENCES)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_config_without_token_names_still_finds_well_known_tokens(
    kind: str, wordpiece: Tokenizer, bpe: Tokenizer, tmp_path: Path
) -> None:
    original = {"wordpiece": wordpiece, "bpe": bpe}[kind]
    original.save(tmp_path)
    (tmp_path / TOKENIZER_CONFIG_FILE).write_text(json.dumps({"do_lower_case": True, "model_max_length": 64}))
    loaded = Tokenizer.load(tmp_path)
    assert loaded.max_length == 64
    for role in ("pad", "cls", "sep"):
        assert loaded.token_id(role) == original.token_id(role), role


def test_role_missing_from_vocabulary_is_an_error(wordpiece: Tokenizer) -> None:
    with pytest.raises(NlpkitError, match=r"pad.*<nope>"):
        Tokenizer(wordpiece.backend, {"pad": "<nope>"}, 16)


@pytest.mark.parametrize("content", ["{not json", '{"version": "1.0", "model": 3}', ""])
def test_corrupt_tokenizer_file_names_the_file(content: str, tmp_path: Path) -> None:
    path = tmp_path / TOKENIZER_FILE
    path.write_text(content)
    with pytest.raises(NlpkitError) as caught:
        Tokenizer.from_file(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_tokenizer_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(NlpkitError, match="missing"):
        Tokenizer.load(tmp_path / "missing")


def test_corrupt_tokenizer_config_names_the_file(wordpiece: Tokenizer, tmp_path: Path) -> None:
    wordpiece.save(tmp_path)
    (tmp_path / TOKENIZER_CONFIG_FILE).write_text("{oops")
    with pytest.raises(NlpkitError, match=TOKENIZER_CONFIG_FILE):
        Tokenizer.load(tmp_path)


# -- parity with transformers -------------------------------------------------------------------------------------


def test_transformers_reads_the_saved_folder(trained: Tokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    trained.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path), local_files_only=True)
    expected = hf(SENTENCES, truncation=True, max_length=trained.max_length)["input_ids"]
    assert ids(trained, SENTENCES) == expected
    for role in ("pad", "unk", "cls", "sep", "mask"):
        assert getattr(hf, f"{role}_token") == trained.special_tokens[role], role
        assert getattr(hf, f"{role}_token_id") == trained.token_id(role), role
    assert hf.model_max_length == trained.max_length


def test_transformers_pairs_match(wordpiece: Tokenizer, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    wordpiece.save(tmp_path)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tmp_path), local_files_only=True)
    firsts, seconds = SENTENCES, SENTENCES[::-1]
    expected = hf(firsts, seconds, truncation=True, max_length=wordpiece.max_length, return_token_type_ids=True)
    encoded = wordpiece.encode_batch(firsts, seconds)
    assert [e.ids for e in encoded] == expected["input_ids"]
    assert [e.type_ids for e in encoded] == expected["token_type_ids"]


def test_pretrained_minilm_matches_transformers() -> None:
    if not (MINILM / TOKENIZER_FILE).is_file():
        pytest.skip(f"no pretrained tokenizer at {MINILM}")
    transformers = pytest.importorskip("transformers")
    ours = Tokenizer.from_file(MINILM / TOKENIZER_FILE)
    hf = transformers.AutoTokenizer.from_pretrained(str(MINILM), local_files_only=True)
    assert ours.max_length == 512  # from tokenizer_config.json, not the file's own 128 truncation
    for role in ("pad", "unk", "cls", "sep", "mask"):
        assert ours.token_id(role) == getattr(hf, f"{role}_token_id"), role
    long_text = LONG_TEXT * 3
    texts = [*SENTENCES, long_text]
    expected = hf(texts, truncation=True, max_length=ours.max_length)["input_ids"]
    assert ids(ours, texts) == expected
    assert len(expected[-1]) == 512
    expected_pairs = hf(texts, texts[::-1], truncation=True, max_length=ours.max_length, return_token_type_ids=True)
    encoded = ours.encode_batch(texts, texts[::-1])
    assert [e.ids for e in encoded] == expected_pairs["input_ids"]
    assert [e.type_ids for e in encoded] == expected_pairs["token_type_ids"]
