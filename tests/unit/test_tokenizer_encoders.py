"""Tests for nlpkit.tokenization.from_pretrained on the folders of four encoder / multilingual families.

XLM-RoBERTa (xlm-roberta-base, multilingual-e5, bge-m3), mT5, DeBERTa-v2 / v3 /
mDeBERTa and ModernBERT folders are built here the way their Hub folders are
laid out: a small vocabulary is trained on ``TRAINING_TEXT`` (a SentencePiece
unigram model with each family's special-piece layout; ``tokenizers``'
byte-level BPE for ModernBERT), written as the SentencePiece model the family
ships (``spiece.model``, ``spm.model``) and / or as the ``tokenizer.json``
that transformers' own converter (``transformers.convert_slow_tokenizer``)
makes of it, with the configs those folders carry (``tokenizer_class``,
``extra_ids``, ``do_lower_case``, ``split_by_punct``,
``clean_up_tokenization_spaces``, ``added_tokens_decoder``, config.json
``model_type``). (XLM-R's ``sentencepiece.bpe.model`` layout is checked in
tests/unit/test_tokenizer_folders.py.)

The oracle is ``transformers.AutoTokenizer`` on the same folder, whatever
class it picks and however that class rebuilds the pipeline (transformers 5's
T5, XLM-R and DeBERTa-v2 classes keep only the pieces of a tokenizer.json):
each test checks the class, then that nlpkit gives the same ids for the 35
texts and their pairs (with token type ids), the same special-token roles,
the same decoded text, and the same ids after a save and reload.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from tokenizers import (
    AddedToken,
    decoders,
    models,
    pre_tokenizers,
    processors,
    trainers,
)

from nlpkit import NlpkitError
from nlpkit.tokenization import Tokenizer, from_pretrained
from tests.unit.test_tokenizer_folders import (
    MAX_LENGTH,
    TEXTS,
    TRAINING_TEXT,
    assert_roles,
    assert_same_as_transformers,
    hf_tokenizer,
    needs_protobuf,
    train_sentencepiece,
    write_json,
)

# Text for the roles and quirks below: masks with and without a space before them, tabs and runs of spaces,
# punctuation that clean_up_tokenization_spaces joins, and compatibility characters NFKC would fold.
ENCODER_TEXTS = [
    "fill the [MASK] in, the<mask>here and [MASK]",
    "Paris is the <mask> of France .",
    "spaces  and\ttabs\n\nnewlines   here",
    "it 's a test , isn't it ? yes !",
    "ﬁne Ｗｉｄｅ ① ㎏",
]
ROUND_TRIP_TEXTS = ["the cat sees the house yesterday", "it 's a dog , no ?", "Crème brûlée"]


def token_entry(content: str, lstrip: bool = False, special: bool = True) -> dict[str, Any]:
    """An added token as transformers writes it in tokenizer_config.json's added_tokens_decoder."""
    return {"content": content, "lstrip": lstrip, "normalized": False, "rstrip": False, "single_word": False,
            "special": special}


def added_tokens_decoder(backend: tokenizers.Tokenizer) -> dict[str, dict[str, Any]]:
    decoder = backend.get_added_tokens_decoder()
    return {str(i): token_entry(t.content, t.lstrip, t.special) for i, t in sorted(decoder.items())}


def converted(folder: Path, converter: str) -> tokenizers.Tokenizer:
    """The tokenizer.json transformers' converter makes of the SentencePiece folder (the Hub files come from it)."""
    convert_slow_tokenizer = pytest.importorskip("transformers.convert_slow_tokenizer")
    return getattr(convert_slow_tokenizer, converter)(hf_tokenizer(folder)).converted()


def to_tokenizer_json(folder: Path, model_file: str, converter: str) -> None:
    """Replace the folder's SentencePiece model with the tokenizer.json converted from it."""
    backend = converted(folder, converter)
    backend.save(str(folder / "tokenizer.json"))
    (folder / model_file).unlink()


# -- the families' folders ------------------------------------------------------------------------------------------


def xlm_roberta(folder: Path) -> None:
    """xlm-roberta-base / multilingual-e5 / bge-m3: tokenizer.json only, fairseq ids, <mask> taking its space."""
    needs_protobuf()
    model = train_sentencepiece(TRAINING_TEXT, unk_id=0, bos_id=1, eos_id=2, pad_id=-1)  # fairseq's spm layout
    (folder / "sentencepiece.bpe.model").write_bytes(model)
    write_json(folder / "tokenizer_config.json", {"tokenizer_class": "XLMRobertaTokenizer"})
    backend = converted(folder, "XLMRobertaConverter")
    backend.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False, special=True)])
    backend.save(str(folder / "tokenizer.json"))
    (folder / "sentencepiece.bpe.model").unlink()
    names = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "mask_token": "<mask>",
             "pad_token": "<pad>", "sep_token": "</s>", "unk_token": "<unk>"}  # fmt: skip
    write_json(folder / "tokenizer_config.json", {
        "added_tokens_decoder": added_tokens_decoder(backend), **names, "clean_up_tokenization_spaces": True,
        "model_max_length": 512, "tokenizer_class": "XLMRobertaTokenizer",
    })  # fmt: skip
    write_json(folder / "config.json", {"model_type": "xlm-roberta", "max_position_embeddings": MAX_LENGTH + 2})


def mt5(folder: Path, layout: str, extra_ids: int | None) -> None:
    """google/mt5-small: spiece.model (pad 0, eos 1, unk 2, no bos) or its tokenizer.json; ``extra_ids`` as given.

    ``extra_ids=None``: the key is absent, so T5Tokenizer's default of 100 sentinels applies.
    """
    needs_protobuf()
    (folder / "spiece.model").write_bytes(train_sentencepiece(TRAINING_TEXT, pad_id=0, eos_id=1, unk_id=2, bos_id=-1))
    config: dict[str, Any] = {"tokenizer_class": "T5Tokenizer", "model_max_length": MAX_LENGTH,
                              "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}  # fmt: skip
    if extra_ids is not None:
        config["extra_ids"] = extra_ids
    write_json(folder / "tokenizer_config.json", config)
    write_json(folder / "config.json", {"model_type": "mt5", "d_model": 8})
    if layout == "tokenizer.json":
        # The Hub's mT5 tokenizer.json was converted with extra_ids 0: no sentinel among its pieces.
        write_json(folder / "tokenizer_config.json", {**config, "extra_ids": 0})
        to_tokenizer_json(folder, "spiece.model", "T5Converter")
        write_json(folder / "tokenizer_config.json", config)


def deberta_v2(folder: Path, layout: str, **options: Any) -> None:
    """microsoft/deberta-v3-base: spm.model ([PAD] [CLS] [SEP] [UNK] first, [MASK] added last) or its tokenizer.json."""
    needs_protobuf()
    model = train_sentencepiece(
        TRAINING_TEXT, pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]",
        eos_piece="[SEP]", unk_piece="[UNK]",
    )  # fmt: skip
    (folder / "spm.model").write_bytes(model)
    names = {"bos_token": "[CLS]", "cls_token": "[CLS]", "eos_token": "[SEP]", "mask_token": "[MASK]",
             "pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]"}  # fmt: skip
    config = {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": False, "split_by_punct": False, **names,
              "model_max_length": MAX_LENGTH, "vocab_type": "spm", **options}  # fmt: skip
    write_json(folder / "tokenizer_config.json", config)
    write_json(folder / "config.json", {"model_type": "deberta-v2", "max_position_embeddings": 512})
    if layout == "tokenizer.json":
        to_tokenizer_json(folder, "spm.model", "DebertaV2Converter")


def modernbert(folder: Path) -> None:
    """answerdotai/ModernBERT-base: OLMo's byte-level BPE, BERT's special tokens added after it, [MASK] lstrip."""
    backend = tokenizers.Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=900, min_frequency=2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        special_tokens=["|||IP_ADDRESS|||", "<|padding|>"],
    )  # fmt: skip
    backend.train_from_iterator(TRAINING_TEXT, trainer)
    backend.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    for token in ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"):
        backend.add_special_tokens([AddedToken(token, lstrip=token == "[MASK]", normalized=False, special=True)])
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )  # fmt: skip
    backend.save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", {
        "added_tokens_decoder": added_tokens_decoder(backend), "clean_up_tokenization_spaces": True,
        "cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]",
        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 8192,
        "tokenizer_class": "PreTrainedTokenizerFast",
    })  # fmt: skip
    write_json(folder / "config.json", {"model_type": "modernbert", "max_position_embeddings": 8192})


BERT_ROLES = ["cls", "sep", "pad", "unk", "mask"]
T5_ROLES = ["eos", "unk", "pad"]
DEBERTA_ROLES = [*BERT_ROLES, "bos", "eos"]  # [CLS] and [SEP] also play bos and eos
# case -> (builder, the class AutoTokenizer picks, the roles the family defines, max_length)
FAMILIES: dict[str, tuple[Callable[[Path], None], str, list[str], int]] = {
    "xlm-roberta-tokenizer-json": (xlm_roberta, "XLMRobertaTokenizer", [*BERT_ROLES, "bos", "eos"], MAX_LENGTH),
    "mt5-spiece": (lambda f: mt5(f, "spiece.model", 0), "T5Tokenizer", T5_ROLES, MAX_LENGTH),
    "mt5-spiece-default-extra-ids": (lambda f: mt5(f, "spiece.model", None), "T5Tokenizer", T5_ROLES, MAX_LENGTH),
    "mt5-tokenizer-json": (lambda f: mt5(f, "tokenizer.json", 0), "T5Tokenizer", T5_ROLES, MAX_LENGTH),
    # No sentinel among the pieces, the default 100 in the config: transformers appends <extra_id_0> .. 99.
    "mt5-tokenizer-json-default-extra-ids": (
        lambda f: mt5(f, "tokenizer.json", None), "T5Tokenizer", T5_ROLES, MAX_LENGTH
    ),
    "deberta-v3-spm": (lambda f: deberta_v2(f, "spm.model"), "DebertaV2Tokenizer", DEBERTA_ROLES, MAX_LENGTH),
    "deberta-v2-spm-lower-punct": (
        lambda f: deberta_v2(f, "spm.model", do_lower_case=True, split_by_punct=True),
        "DebertaV2Tokenizer",
        DEBERTA_ROLES,
        MAX_LENGTH,
    ),
    "deberta-v3-tokenizer-json": (
        lambda f: deberta_v2(f, "tokenizer.json", clean_up_tokenization_spaces=True),
        "DebertaV2Tokenizer",
        DEBERTA_ROLES,
        MAX_LENGTH,
    ),
    # model_type modernbert is one of transformers' "incorrect Hub tokenizer class" types: TokenizersBackend.
    "modernbert": (modernbert, "TokenizersBackend", BERT_ROLES, 8192),
}


_BUILT: dict[str, tuple[str, Tokenizer, Any]] = {}


def _built(case: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Tokenizer, Any]:
    """(case, nlpkit's tokenizer, transformers') for one family's folder, built once per session."""
    if case not in _BUILT:
        folder = tmp_path_factory.mktemp(case)
        FAMILIES[case][0](folder)
        _BUILT[case] = case, from_pretrained(folder), hf_tokenizer(folder)
    return _BUILT[case]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Tokenizer, Any]:
    return _built(request.param, tmp_path_factory)


def test_ids_and_roles_match_transformers(family: tuple[str, Tokenizer, Any]) -> None:
    case, ours, hf = family
    _, class_name, roles, max_length = FAMILIES[case]
    assert type(hf).__name__ == class_name
    assert ours.max_length == max_length and ours.vocab_size == len(hf)
    assert_roles(ours, hf, roles)
    texts = [*TEXTS, *ENCODER_TEXTS]
    if max_length == MAX_LENGTH:
        assert_same_as_transformers(ours, hf, texts=texts)
    else:  # ModernBERT's 8192 tokens: the long text is truncated at a shorter length, the same for both
        assert_same_as_transformers(from_pretrained(hf.name_or_path, max_length=MAX_LENGTH), hf, texts=texts)


def test_template_and_type_ids(family: tuple[str, Tokenizer, Any]) -> None:
    """Where each family puts its special tokens around one text and a pair, and which type ids pairs get."""
    case, ours, _ = family
    single, pair = ours.encode("a dog"), ours.encode("a dog", "the cat")
    if case.startswith("mt5"):  # A </s> B </s>, no bos
        assert single.ids[-1] == ours.token_id("eos") and pair.ids.count(ours.token_id("eos")) == 2
        assert single.ids[0] != ours.token_id("pad")
    elif case.startswith("xlm"):  # <s> A </s></s> B </s>, type ids all 0
        assert single.ids[0] == ours.token_id("cls") and pair.ids.count(ours.token_id("sep")) == 3
        assert set(pair.type_ids) == {0}
    else:  # [CLS] A [SEP] B [SEP], type ids 0 then 1
        assert single.ids[0] == ours.token_id("cls") and single.ids[-1] == ours.token_id("sep")
        assert pair.ids.count(ours.token_id("sep")) == 2 and pair.type_ids[-1] == 1 and pair.type_ids[0] == 0


@pytest.mark.parametrize("case", [case for case in FAMILIES if case.startswith("mt5")])
def test_sentinels_as_transformers_numbers_them(case: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    _, ours, hf = _built(case, tmp_path_factory)
    sentinels = [f"<extra_id_{i}>" for i in range(100)]
    hf_vocab = hf.get_vocab()
    assert [ours.backend.token_to_id(t) for t in sentinels] == [hf_vocab.get(t) for t in sentinels]
    has_sentinels = case.endswith("default-extra-ids")
    assert (ours.backend.token_to_id("<extra_id_0>") is not None) == has_sentinels


@pytest.mark.parametrize("case", [case for case in FAMILIES if case.startswith(("xlm", "modernbert"))])
def test_mask_takes_the_space_before_it(case: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """lstrip masks (XLM-R's <mask>, ModernBERT's [MASK]): "the [MASK]" and "the[MASK]" give the same ids."""
    _, ours, hf = _built(case, tmp_path_factory)
    mask = ours.special_tokens["mask"]
    spaced, joined = ours.encode(f"the {mask} of"), ours.encode(f"the{mask} of")
    assert spaced.ids == joined.ids == hf(f"the {mask} of")["input_ids"]


def test_decode_matches_transformers(family: tuple[str, Tokenizer, Any]) -> None:
    _, ours, hf = family
    texts = [*TEXTS, *ENCODER_TEXTS]
    for ids in (e.ids for e in ours.encode_batch(texts)):
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    for text in ROUND_TRIP_TEXTS:
        ids = ours.encode(text).ids
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)


def test_save_and_load_keep_ids(family: tuple[str, Tokenizer, Any], tmp_path: Path) -> None:
    _, ours, _ = family
    ours.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    texts = [*TEXTS, *ENCODER_TEXTS]
    assert [e.ids for e in loaded.encode_batch(texts)] == [e.ids for e in ours.encode_batch(texts)]
    pairs = texts[::-1]
    encoded, reloaded = ours.encode_batch(texts, pairs), loaded.encode_batch(texts, pairs)
    assert [e.ids for e in reloaded] == [e.ids for e in encoded]
    assert [e.type_ids for e in reloaded] == [e.type_ids for e in encoded]
    assert loaded.special_tokens == ours.special_tokens and loaded.max_length == ours.max_length
    ids = [e.ids for e in encoded]
    assert [loaded.decode(row) for row in ids] == [ours.decode(row) for row in ids]


def test_corrupt_spm_model_names_the_file(tmp_path: Path) -> None:
    pytest.importorskip("sentencepiece")
    (tmp_path / "spm.model").write_bytes(b"\x0a\x05oops")
    write_json(tmp_path / "tokenizer_config.json", {"tokenizer_class": "DebertaV2Tokenizer"})
    with pytest.raises(NlpkitError, match=r"spm\.model: not a SentencePiece model") as caught:
        from_pretrained(tmp_path)
    assert "\n" not in str(caught.value)


def test_spm_model_found_by_its_file_name(tmp_path: Path) -> None:
    """No tokenizer_class and no model_type: spm.model alone is read as DeBERTa-v2's."""
    deberta_v2(tmp_path, "spm.model")
    for name in ("tokenizer_config.json", "config.json"):
        (tmp_path / name).unlink()
    ours = from_pretrained(tmp_path)
    assert ours.special_tokens["cls"] == "[CLS]" and ours.encode("a").ids[0] == ours.token_id("cls")


@pytest.mark.parametrize("layout", ["spm.model", "tokenizer.json"])
def test_deberta_pieces_are_sentencepieces_own(layout: str, tmp_path: Path) -> None:
    """DeBERTa-v2/v3 text is segmented as its SentencePiece model segments it, normaliser included (NFKC: "²" as
    "2", "ﬁ" as "fi"), whichever transformers release is installed: the model was trained on those pieces."""
    sentencepiece = pytest.importorskip("sentencepiece")
    reference, folder = tmp_path / "spm", tmp_path / "under-test"
    reference.mkdir(), folder.mkdir()
    deberta_v2(reference, "spm.model")
    deberta_v2(folder, layout)  # the same model (a deterministic training), as spm.model or its tokenizer.json
    processor = sentencepiece.SentencePieceProcessor(model_file=str(reference / "spm.model"))
    ours = from_pretrained(folder)
    for text in [*ENCODER_TEXTS[2:], *ROUND_TRIP_TEXTS, "x² + y² = z², α β γ"]:
        assert ours.encode(text, add_special_tokens=False).ids == processor.encode(text), text
