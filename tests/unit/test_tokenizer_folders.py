"""Tests for nlpkit.tokenization.from_pretrained: Hugging Face folders give the ids transformers gives.

The oracle is ``transformers.AutoTokenizer`` on the same folder. The real
MiniLM folder is used when present; every other folder is built here: a
vocabulary is trained on a small corpus (``tokenizers`` for WordPiece and
byte-level BPE, ``sentencepiece`` for T5, XLM-R and Marian) and written as the
files that family ships, with the configs its hub folders carry.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, trainers

from nlpkit import NlpkitError
from nlpkit.tokenization import TOKENIZER_FILE, Tokenizer, from_pretrained
from tests.unit.test_tokenization import LONG_TEXT, SENTENCES, make_corpus

MINILM = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "all-minilm-l6-v2"
MAX_LENGTH = 48  # the built folders' model_max_length: LONG_TEXT is far longer

# Text that holds special tokens of one family or another, and look-alikes that are not special.
SPECIAL_TEXTS = [
    "first part [SEP] second part [CLS] and a [MASK] here",
    "a sentence</s> then <s> another <pad> and <unk> or <mask> here",
    "gpt style <|endoftext|>boundary<|endoftext|>",
    "T5 sentinels <extra_id_0> and <extra_id_1> fill the blanks",
    "look-alikes [sep] [cls] </S> <extra_id_x>",
]
# 35 texts: accents, CJK, emoji, numbers, whitespace, empty, special tokens, and one that must be truncated.
TEXTS = [*SENTENCES[:-1], *SPECIAL_TEXTS, LONG_TEXT]
TRAINING_TEXT = make_corpus(300, seed=3) + SENTENCES[:-1]


def hf_tokenizer(folder: Path) -> Any:
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def assert_rows_equal(texts: list[str], got: list[list[int]], expected: list[list[int]], what: str) -> None:
    wrong = [(text[:60], mine, theirs) for text, mine, theirs in zip(texts, got, expected) if mine != theirs]
    assert not wrong, f"{len(wrong)} of {len(texts)} {what} differ; first: {wrong[0]}"


def assert_same_as_transformers(
    ours: Tokenizer, hf: Any, texts: list[str] = TEXTS, pairs: bool = True, type_ids: bool = True
) -> None:
    """input_ids (and for pairs token_type_ids) equal transformers' with truncation to the same length."""
    expected = hf(texts, truncation=True, max_length=ours.max_length)["input_ids"]
    assert_rows_equal(texts, [e.ids for e in ours.encode_batch(texts)], expected, "input_ids")
    assert max(len(row) for row in expected) == ours.max_length  # the long text was truncated
    if pairs:
        seconds = texts[::-1]
        want = hf(texts, seconds, truncation=True, max_length=ours.max_length, return_token_type_ids=True)
        encoded = ours.encode_batch(texts, seconds)
        assert_rows_equal(texts, [e.ids for e in encoded], want["input_ids"], "pair input_ids")
        if type_ids:
            assert_rows_equal(texts, [e.type_ids for e in encoded], want["token_type_ids"], "pair token_type_ids")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")


def assert_roles(ours: Tokenizer, hf: Any, roles: list[str]) -> None:
    for role in roles:
        assert ours.special_tokens.get(role) == getattr(hf, f"{role}_token"), role
        assert ours.token_id(role) == getattr(hf, f"{role}_token_id"), role


# -- the real MiniLM folder -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> Path:
    if not (MINILM / TOKENIZER_FILE).is_file():
        pytest.skip(f"no pretrained tokenizer at {MINILM}")
    return MINILM


def test_minilm_matches_transformers(minilm: Path) -> None:
    ours, hf = from_pretrained(minilm), hf_tokenizer(minilm)
    assert ours.max_length == hf.model_max_length == 512
    assert_roles(ours, hf, ["pad", "unk", "cls", "sep", "mask"])
    assert_same_as_transformers(ours, hf, texts=[*TEXTS, LONG_TEXT * 3])


def test_minilm_vocab_txt_alone_matches_transformers(minilm: Path, tmp_path: Path) -> None:
    """The same folder without its tokenizer.json: rebuilt from vocab.txt and the configs."""
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        shutil.copy(minilm / name, tmp_path / name)
    ours, hf = from_pretrained(tmp_path), hf_tokenizer(tmp_path)
    assert ours.max_length == 512 and ours.vocab_size == hf.vocab_size == 30522
    assert_roles(ours, hf, ["pad", "unk", "cls", "sep", "mask"])
    texts = [*TEXTS, LONG_TEXT * 3]
    assert_same_as_transformers(ours, hf, texts=texts)
    from_json = from_pretrained(minilm)
    assert [e.ids for e in ours.encode_batch(texts)] == [e.ids for e in from_json.encode_batch(texts)]


# -- WordPiece from vocab.txt ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordpiece_vocab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cased WordPiece vocab.txt, so every casing option below has pieces to find."""
    backend = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=700, min_frequency=1, special_tokens=specials, show_progress=False)
    backend.train_from_iterator(TRAINING_TEXT, trainer)
    folder = tmp_path_factory.mktemp("wordpiece")
    backend.model.save(str(folder))
    return folder / "vocab.txt"


@pytest.mark.parametrize(
    "options",
    [
        {"do_lower_case": True},
        {"do_lower_case": False},
        {"do_lower_case": True, "strip_accents": False},
        {"do_lower_case": False, "strip_accents": True},
        {"do_lower_case": True, "tokenize_chinese_chars": False},
    ],
    ids=["uncased", "cased", "lower-keep-accents", "cased-strip-accents", "no-cjk-split"],
)
def test_wordpiece_vocab_txt_matches_transformers(
    options: dict[str, Any], wordpiece_vocab: Path, tmp_path: Path
) -> None:
    shutil.copy(wordpiece_vocab, tmp_path / "vocab.txt")
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "model_max_length": MAX_LENGTH, **options}
    write_json(tmp_path / "tokenizer_config.json", tokenizer_config)
    ours, hf = from_pretrained(tmp_path), hf_tokenizer(tmp_path)
    assert type(hf).__name__.startswith("BertTokenizer")
    assert ours.max_length == MAX_LENGTH and ours.vocab_size == hf.vocab_size
    assert_roles(ours, hf, ["pad", "unk", "cls", "sep", "mask"])
    assert_same_as_transformers(ours, hf)


# -- byte-level BPE from vocab.json + merges.txt --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bpe_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<|endoftext|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=900,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TRAINING_TEXT, trainer)
    folder = tmp_path_factory.mktemp("bpe")
    backend.model.save(str(folder))
    return folder


# (tokenizer_config.json, config.json, the roles transformers sets)
BPE_FOLDERS = {
    "gpt2": (
        {"tokenizer_class": "GPT2Tokenizer"},
        {"model_type": "gpt2", "n_positions": MAX_LENGTH},
        ["bos", "eos", "unk"],
    ),
    "gpt2-prefix-space-bos": (
        {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": True, "add_bos_token": True, "pad_token": "<pad>"},
        {"model_type": "gpt2", "n_positions": MAX_LENGTH},
        ["bos", "eos", "unk", "pad"],
    ),
    # RoBERTa's position table has two extra rows: max_position_embeddings 50 -> 48 tokens.
    "roberta": (
        {"tokenizer_class": "RobertaTokenizer"},
        {"model_type": "roberta", "max_position_embeddings": MAX_LENGTH + 2},
        ["bos", "eos", "unk", "sep", "pad", "cls", "mask"],
    ),
    # No tokenizer class: the family comes from config.json's model_type.
    "bart-by-model-type": (
        {"model_max_length": MAX_LENGTH},
        {"model_type": "bart", "max_position_embeddings": 1024},
        ["bos", "eos", "unk", "sep", "pad", "cls", "mask"],
    ),
}


@pytest.mark.parametrize("kind", list(BPE_FOLDERS))
def test_byte_level_bpe_matches_transformers(kind: str, bpe_files: Path, tmp_path: Path) -> None:
    tokenizer_config, config, roles = BPE_FOLDERS[kind]
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(bpe_files / name, tmp_path / name)
    write_json(tmp_path / "tokenizer_config.json", tokenizer_config)
    write_json(tmp_path / "config.json", config)
    ours, hf = from_pretrained(tmp_path), hf_tokenizer(tmp_path)
    assert ours.max_length == MAX_LENGTH and ours.vocab_size == len(hf)
    assert_roles(ours, hf, roles)
    assert_same_as_transformers(ours, hf)
    if kind.startswith(("roberta", "bart")):
        assert ours.encode_batch(["a b"], ["c"])[0].ids.count(ours.token_id("sep")) == 3  # <s> A </s></s> B </s>
    text = "Crème brûlée 😀 at 3:45"
    assert ours.decode(ours.encode_batch([text])[0].ids).strip() == text


def test_added_tokens_decoder_keeps_ids_and_options(bpe_files: Path, tmp_path: Path) -> None:
    """A tokenizer_config.json as transformers 4.34+ writes it: every added token with its id and options."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(bpe_files / name, tmp_path / name)
    size = len(json.loads((bpe_files / "vocab.json").read_text(encoding="utf-8")))

    def entry(content: str, special: bool = True, lstrip: bool = False, normalized: bool = False) -> dict[str, Any]:
        options = {"lstrip": lstrip, "normalized": normalized, "rstrip": False, "single_word": False}
        return {"content": content, **options, "special": special}

    decoder = {str(i): entry(t, normalized=True) for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>"])}
    decoder["4"] = entry("<mask>", lstrip=True)  # RoBERTa's mask takes the space before it
    decoder[str(size)] = entry("<mark>", special=False, normalized=True)  # a new, ordinary token
    tokenizer_config = {"tokenizer_class": "RobertaTokenizer", "added_tokens_decoder": decoder}
    write_json(tmp_path / "tokenizer_config.json", tokenizer_config)
    write_json(tmp_path / "config.json", {"model_type": "roberta", "max_position_embeddings": MAX_LENGTH + 2})
    ours, hf = from_pretrained(tmp_path), hf_tokenizer(tmp_path)
    assert ours.backend.token_to_id("<mark>") == hf.convert_tokens_to_ids("<mark>") == size
    texts = [*TEXTS, "fill the <mask> in", "fill the<mask>in", "a <mark> and<mark>more"]
    assert_same_as_transformers(ours, hf, texts=texts)
    marked = ours.encode_batch(["a <mark> b"])[0].ids
    assert ours.decode(marked) == hf.decode(marked, skip_special_tokens=True)  # <mark> is not special: kept
    decoder["0"] = entry("</s>", normalized=True)  # claims id 0 for a token that has id 2
    write_json(tmp_path / "tokenizer_config.json", tokenizer_config)
    with pytest.raises(NlpkitError, match=r"tokenizer_config.json: added token '</s>' has id 0 .* 2 in the vocabulary"):
        from_pretrained(tmp_path)


# -- SentencePiece: T5, XLM-R, Marian -------------------------------------------------------------------------------


def train_sentencepiece(texts: list[str], **ids: int) -> bytes:
    """A small unigram model with the given special-piece ids (unk_id=..., bos_id=..., eos_id=..., pad_id=...)."""
    sentencepiece = pytest.importorskip("sentencepiece")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=400,
        hard_vocab_limit=False,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
        num_threads=1,
        **ids,
    )
    return model.getvalue()


def needs_protobuf() -> None:
    # transformers reads spiece.model / sentencepiece.bpe.model through protobuf (nlpkit does not).
    pytest.importorskip("google.protobuf")


def test_t5_spiece_model_matches_transformers(tmp_path: Path) -> None:
    needs_protobuf()
    (tmp_path / "spiece.model").write_bytes(train_sentencepiece(TRAINING_TEXT, pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
    write_json(tmp_path / "tokenizer_config.json", {"tokenizer_class": "T5Tokenizer", "model_max_length": MAX_LENGTH})
    write_json(tmp_path / "config.json", {"model_type": "t5", "d_model": 8})
    ours, hf = from_pretrained(tmp_path), hf_tokenizer(tmp_path)
    assert type(hf).__name__ == "T5Tokenizer"
    assert ours.max_length == MAX_LENGTH and ours.vocab_size == len(hf)
    assert_roles(ours, hf, ["eos", "unk", "pad"])
    assert ours.backend.token_to_id("<extra_id_0>") == hf.convert_tokens_to_ids("<extra_id_0>") == ours.vocab_size - 1
    assert_same_as_transformers(ours, hf)
    assert ours.encode_batch(["a dog"])[0].ids[-1] == ours.token_id("eos")


def test_xlm_roberta_sentencepiece_bpe_model_matches_transformers(tmp_path: Path) -> None:
    needs_protobuf()
    model = train_sentencepiece(TRAINING_TEXT, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)  # fairseq's spm layout
    (tmp_path / "sentencepiece.bpe.model").write_bytes(model)
    write_json(tmp_path / "tokenizer_config.json", {"tokenizer_class": "XLMRobertaTokenizer"})
    write_json(tmp_path / "config.json", {"model_type": "xlm-roberta", "max_position_embeddings": MAX_LENGTH + 2})
    ours, hf = from_pretrained(tmp_path), hf_tokenizer(tmp_path)
    assert ours.max_length == MAX_LENGTH and ours.vocab_size == len(hf)
    assert_roles(ours, hf, ["bos", "eos", "unk", "sep", "pad", "cls", "mask"])
    assert_same_as_transformers(ours, hf)


GERMAN = (
    "der Hund|die Straße|das schöne Haus|ein großer Fluss|unsere Grüße|die Brücke|das Mädchen".split("|"),
    "sieht|mag|malte|fand|trug|besuchte|vergaß|schrieb über".split("|"),
    "das Haus|einen roten Ball|sieben Äpfel|den Berg|die Fußgängerzone|ein Gemälde|den Garten|München".split("|"),
)


def german_corpus(n: int = 300, seed: int = 5) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for words in GERMAN) + f" {rng.randint(0, 999)}." for _ in range(n)]


@pytest.fixture(scope="module")
def marian_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An en -> de Marian folder: two SentencePiece models and the shared vocab.json of both, as opus-mt ships."""
    # Marian's models put <unk> first, then <s> and </s>; the source side never saw "ß" or "ö", the target did.
    source = train_sentencepiece(make_corpus(300, seed=4), unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    target = train_sentencepiece(german_corpus(), unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    sentencepiece = pytest.importorskip("sentencepiece")
    vocab = {"</s>": 0, "<unk>": 1}
    for model in (source, target):
        processor = sentencepiece.SentencePieceProcessor(model_proto=model)
        for i in range(processor.get_piece_size()):
            if not (processor.is_control(i) or processor.is_unknown(i)):
                vocab.setdefault(processor.id_to_piece(i), len(vocab))
    for token in (">>de<<", ">>fr<<", "<pad>"):
        vocab[token] = len(vocab)
    folder = tmp_path_factory.mktemp("marian")
    (folder / "source.spm").write_bytes(source)
    (folder / "target.spm").write_bytes(target)
    write_json(folder / "vocab.json", vocab)
    write_json(folder / "tokenizer_config.json", {"source_lang": "en", "target_lang": "de", "separate_vocabs": False})
    write_json(folder / "special_tokens_map.json", {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})
    write_json(folder / "config.json", {"model_type": "marian", "max_position_embeddings": MAX_LENGTH})
    return folder


def test_marian_matches_transformers(marian_folder: Path) -> None:
    ours, hf = from_pretrained(marian_folder), hf_tokenizer(marian_folder)
    assert type(hf).__name__ == "MarianTokenizer"
    assert ours.max_length == MAX_LENGTH and ours.vocab_size == hf.vocab_size
    assert_roles(ours, hf, ["eos", "unk", "pad"])
    texts = [*TEXTS, ">>de<< Hello there, my neighbour", "die Straße and the café"]
    assert_same_as_transformers(ours, hf, texts=texts, pairs=False)
    # Pairs (A B </s>) that fit: MarianTokenizer truncates pairs in Python, which splits an odd surplus between
    # the two texts the other way round from the `tokenizers` library nlpkit (and every fast tokenizer) uses.
    pairs = [(a, b) for a, b in zip(texts, texts[::-1]) if len(hf(a, b)["input_ids"]) <= ours.max_length]
    assert len(pairs) >= 20
    firsts, seconds = [a for a, _ in pairs], [b for _, b in pairs]
    expected = hf(firsts, seconds)["input_ids"]
    assert_rows_equal(firsts, [e.ids for e in ours.encode_batch(firsts, seconds)], expected, "pair input_ids")


def test_marian_target_side_matches_transformers(marian_folder: Path) -> None:
    ours, hf = from_pretrained(marian_folder), hf_tokenizer(marian_folder)
    assert ours.target is not None and ours.target.vocab_size == ours.vocab_size
    texts = [*german_corpus(20, seed=9), *TEXTS]
    expected = hf(text_target=texts, truncation=True, max_length=ours.max_length)["input_ids"]
    assert_rows_equal(texts, [e.ids for e in ours.target.encode_batch(texts)], expected, "target input_ids")
    # The sides segment differently: the German model knows "Straße" whole, the English one does not.
    assert ours.target.encode_batch(["die Straße"])[0].ids != ours.encode_batch(["die Straße"])[0].ids


def test_marian_unknown_characters_match_transformers(marian_folder: Path) -> None:
    """Text the source model cannot spell: transformers looks each unknown run up whole in vocab.json."""
    ours, hf = from_pretrained(marian_folder), hf_tokenizer(marian_folder)
    texts = [
        "Straße",  # "ß" alone: unknown to the source model, a piece of the target model
        "Fußßball and ßö",  # runs of target-only letters: not in vocab.json -> <unk>
        "schön Grüße",
        "Gemälde: 😀😀 and 東京",  # unknown to both sides
        "ß",
        "ßß ß ß",
        "Ωmega ΩΩ",
    ]
    expected = hf(texts)["input_ids"]
    assert_rows_equal(texts, [e.ids for e in ours.encode_batch(texts)], expected, "input_ids")
    unk = ours.token_id("unk")
    assert unk not in ours.encode_batch(["ß"])[0].ids and unk in ours.encode_batch(["ßö"])[0].ids


def test_marian_saves_and_loads_both_sides(marian_folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("sentencepiece")
    ours = from_pretrained(marian_folder)
    ours.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert loaded.target is not None
    assert [e.ids for e in loaded.encode_batch(TEXTS)] == [e.ids for e in ours.encode_batch(TEXTS)]
    assert [e.ids for e in loaded.target.encode_batch(TEXTS)] == [e.ids for e in ours.target.encode_batch(TEXTS)]
    assert loaded.special_tokens == ours.special_tokens and loaded.max_length == ours.max_length
    text = "the old teacher found seven apples"
    assert ours.target.decode(ours.encode_batch([text])[0].ids) == text


# -- choosing the files, lengths and errors -------------------------------------------------------------------------


def test_tokenizer_json_comes_first(tmp_path: Path) -> None:
    trained = Tokenizer.train(TRAINING_TEXT, kind="bpe", vocab_size=400, max_length=40)
    trained.save(tmp_path)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")  # would tokenize very differently
    loaded = from_pretrained(tmp_path)
    assert loaded.special_tokens == trained.special_tokens and loaded.max_length == 40
    assert [e.ids for e in loaded.encode_batch(TEXTS)] == [e.ids for e in trained.encode_batch(TEXTS)]


def test_max_length_argument_wins_and_positions_cap(wordpiece_vocab: Path, tmp_path: Path) -> None:
    shutil.copy(wordpiece_vocab, tmp_path / "vocab.txt")
    write_json(tmp_path / "tokenizer_config.json", {"tokenizer_class": "BertTokenizer", "model_max_length": 512})
    assert from_pretrained(tmp_path).max_length == 512
    assert len(from_pretrained(tmp_path, max_length=20).encode_batch([LONG_TEXT])[0].ids) == 20
    write_json(tmp_path / "config.json", {"model_type": "bert", "max_position_embeddings": 64})
    assert from_pretrained(tmp_path).max_length == 64  # no more tokens than the model has positions
    write_json(tmp_path / "tokenizer_config.json", {"model_max_length": 1e30})  # transformers' "unknown"
    assert from_pretrained(tmp_path).max_length == 64
    (tmp_path / "config.json").unlink()
    assert from_pretrained(tmp_path).max_length == 512


def test_folder_without_tokenizer_files_names_what_was_looked_for(tmp_path: Path) -> None:
    write_json(tmp_path / "config.json", {"model_type": "llama"})
    with pytest.raises(NlpkitError) as caught:
        from_pretrained(tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message and "\n" not in message
    for name in (TOKENIZER_FILE, "vocab.txt", "vocab.json + merges.txt", "spiece.model", "source.spm"):
        assert name in message, name


def test_missing_folder_says_local_folders_only(tmp_path: Path) -> None:
    # A hub id is refused without touching the network: nlpkit reads local folders only.
    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    with pytest.raises(NlpkitError, match="no such folder.*local folders only"):
        from_pretrained(hub_id)
    with pytest.raises(NlpkitError, match="no such folder"):
        from_pretrained(tmp_path / "absent")


def test_unknown_tokenizer_class_lists_the_known_ones(wordpiece_vocab: Path, tmp_path: Path) -> None:
    shutil.copy(wordpiece_vocab, tmp_path / "vocab.txt")
    write_json(tmp_path / "tokenizer_config.json", {"tokenizer_class": "MPNetTokenizer"})
    with pytest.raises(NlpkitError, match=r"'MPNetTokenizer'.*known: BartTokenizer, BertTokenizer, .*T5Tokenizer"):
        from_pretrained(tmp_path)


def test_named_family_without_its_files(wordpiece_vocab: Path, tmp_path: Path) -> None:
    shutil.copy(wordpiece_vocab, tmp_path / "vocab.txt")
    write_json(tmp_path / "tokenizer_config.json", {"tokenizer_class": "T5TokenizerFast"})
    with pytest.raises(NlpkitError, match="missing spiece.model"):
        from_pretrained(tmp_path)


def test_sentencepiece_missing_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spiece.model").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # import sentencepiece -> ImportError
    with pytest.raises(NlpkitError, match=r'spiece\.model.*pip install "nlpkit\[sentencepiece\]"'):
        from_pretrained(tmp_path)


def test_corrupt_sentencepiece_model_names_the_file(tmp_path: Path) -> None:
    pytest.importorskip("sentencepiece")
    (tmp_path / "spiece.model").write_bytes(b"\x0a\x05oops")
    with pytest.raises(NlpkitError, match=r"spiece\.model: not a SentencePiece model"):
        from_pretrained(tmp_path)
