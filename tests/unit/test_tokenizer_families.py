"""Tests for nlpkit.tokenization.from_pretrained on the tokenizer.json folders of three decoder families.

Gemma 2 / 3, Phi-3 / Phi-4-mini and Qwen2 / Qwen3 folders are built here the
way their Hub folders are laid out: a small vocabulary is trained on
``TRAINING_TEXT`` (a SentencePiece BPE model with byte fallback for Gemma and
Phi-3, whose ``tokenizer.json`` is derived from one; ``tokenizers``' byte-level
BPE for Qwen and Phi-4-mini), the pipeline each family's ``tokenizer.json``
describes is put around it, and the configs carry the fields those folders
carry (``added_tokens_decoder``, ``add_bos_token`` / ``add_eos_token``, the
special tokens, ``tokenizer_class``, config.json ``model_type``).

The oracle is ``transformers.AutoTokenizer`` on the same folder, whatever
class it picks and however that class rebuilds the pipeline: each test checks
the class, then that nlpkit gives the same ids for the 35 texts (and pairs),
the same special-token roles, the same decoded text, and the same ids after
a save and reload.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tokenizers
from tokenizers import (
    AddedToken,
    Regex,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from nlpkit.tokenization import Tokenizer, from_pretrained
from tests.unit.test_tokenizer_folders import (
    MAX_LENGTH,
    TEXTS,
    TRAINING_TEXT,
    assert_roles,
    assert_same_as_transformers,
    hf_tokenizer,
    write_json,
)

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Texts with the families' chat tokens, as prompts hold them, and text the small vocabularies only spell in bytes.
CHAT_TEXTS = [
    "<start_of_turn>user\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\nFour.<|end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHello<|im_end|>",
    "Ωmega ЖЖ ∑∫ and 🦜🦜 bytes",
]
ROUND_TRIP_TEXTS = ["The cat sees the house yesterday.", "Crème brûlée à la façon de Zürich", "Ωmega 🦜 東京", "a  b\tc\nd"]


def token_entry(content: str, special: bool = True, rstrip: bool = False) -> dict[str, Any]:
    """An added token as transformers writes it in tokenizer_config.json's added_tokens_decoder."""
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": rstrip, "single_word": False,
            "special": special}


def added_tokens_decoder(backend: tokenizers.Tokenizer) -> dict[str, dict[str, Any]]:
    decoder = backend.get_added_tokens_decoder()
    return {str(i): token_entry(t.content, t.special, t.rstrip) for i, t in sorted(decoder.items())}


def sentencepiece_bpe(tmp: Path, **options: Any) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocab and merges of a small SentencePiece BPE model with byte fallback, read as transformers reads them."""
    sentencepiece = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")  # transformers' SentencePieceExtractor parses the model with it
    from transformers.convert_slow_tokenizer import SentencePieceExtractor

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_TEXT),
        model_writer=model,
        vocab_size=700,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=0.98,  # the rarest characters are left to the byte pieces
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        minloglevel=2,
        num_threads=1,
        **options,
    )
    path = tmp / "tokenizer.model"
    path.write_bytes(model.getvalue())
    extracted = SentencePieceExtractor(str(path)).extract(models.BPE)
    return extracted["vocab"], [tuple(merge) for merge in extracted["merges"]]


def byte_level_bpe(pre_tokenizer: pre_tokenizers.PreTokenizer, normalizer: normalizers.Normalizer | None,
                   added: list[AddedToken]) -> tokenizers.Tokenizer:
    """A byte-level BPE trained on TRAINING_TEXT, the added tokens after the vocabulary (Qwen's, Phi-4-mini's)."""
    backend = tokenizers.Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=900, min_frequency=2, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(TRAINING_TEXT, trainer)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_tokens(added)
    return backend


# -- the families' folders ------------------------------------------------------------------------------------------


def gemma(folder: Path, model_type: str, named: bool = True) -> None:
    """Gemma 2 / 3: <pad> <eos> <bos> <unk> <mask> first, spaces as "▁" by the normalizer, no prefix, <bos> A.

    ``named=False``: a tokenizer_config.json naming no special token, so that the class's defaults decide.
    """
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
    vocab, merges = sentencepiece_bpe(
        folder, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=specials[4:], add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
    )  # fmt: skip
    assert [vocab[token] for token in specials] == list(range(len(specials)))
    backend = tokenizers.Tokenizer(
        models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True, dropout=None)
    )
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos>:1 $B:1", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    backend.add_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    backend.save(str(folder / "tokenizer.json"))
    names = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
    write_json(folder / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added_tokens_decoder(backend),
        "additional_special_tokens": specials[5:], **names, "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_LENGTH, "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer", "use_default_system_prompt": False,
    })  # fmt: skip
    write_json(folder / "special_tokens_map.json", {
        "additional_special_tokens": specials[5:], **{k: token_entry(v) for k, v in names.items()}
    })  # fmt: skip
    write_json(folder / "config.json", {"model_type": model_type, "max_position_embeddings": 8192})
    if not named:
        (folder / "special_tokens_map.json").unlink()
        unnamed = {"tokenizer_class": "GemmaTokenizer", "model_max_length": MAX_LENGTH}
        write_json(folder / "tokenizer_config.json", unnamed)


def phi3(folder: Path, add_bos_token: bool) -> None:
    """Phi-3 / 3.5: Llama 2's SentencePiece layout (<unk> <s> </s>), "▁" prepended and for spaces, chat tokens."""
    vocab, merges = sentencepiece_bpe(folder, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True)
    backend = tokenizers.Tokenizer(
        models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True, dropout=None)
    )
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    backend.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    backend.add_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    # Phi-3's chat tokens eat the whitespace after them (rstrip).
    chat = ["<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
    backend.add_tokens([AddedToken(t, special=True, normalized=False, rstrip=True) for t in chat])
    backend.save(str(folder / "tokenizer.json"))
    names = {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"}
    write_json(folder / "tokenizer_config.json", {
        "add_bos_token": add_bos_token, "add_eos_token": False, "added_tokens_decoder": added_tokens_decoder(backend),
        **names, "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": MAX_LENGTH,
        "padding_side": "left", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
        "use_default_system_prompt": False,
    })  # fmt: skip
    write_json(folder / "special_tokens_map.json", {k: token_entry(v) for k, v in names.items()})
    write_json(folder / "config.json", {"model_type": "phi3", "max_position_embeddings": 4096})


def phi4_mini(folder: Path) -> None:
    """Phi-4-mini: a GPT-2 style byte-level BPE tokenizer.json, <|endoftext|> in every role, no BOS."""
    added = [AddedToken(t, special=True, normalized=False) for t in ("<|endoftext|>", "<|user|>", "<|assistant|>",
                                                                      "<|end|>", "<|system|>")]
    backend = byte_level_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), None, added)
    backend.save(str(folder / "tokenizer.json"))
    names = {role: "<|endoftext|>" for role in ("bos_token", "eos_token", "pad_token", "unk_token")}
    write_json(folder / "tokenizer_config.json", {
        "add_bos_token": False, "add_eos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder(backend), **names, "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_LENGTH, "tokenizer_class": "GPT2Tokenizer",
    })  # fmt: skip
    write_json(folder / "special_tokens_map.json", {k: token_entry(v) for k, v in names.items()})
    write_json(folder / "config.json", {"model_type": "phi3", "max_position_embeddings": 131072})


def qwen(folder: Path, model_type: str, named: bool = True) -> None:
    """Qwen2 / Qwen3: NFC, Qwen's split regex then bytes, no BOS, <|endoftext|> ends and pads.

    ``named=False``: no <|endoftext|> in tokenizer.json and no special token named in tokenizer_config.json, so
    that the class's defaults decide the roles and transformers appends <|endoftext|> to the vocabulary.
    """
    chat = ("<|endoftext|>", "<|im_start|>", "<|im_end|>") if named else ("<|im_start|>", "<|im_end|>")
    added = [AddedToken(t, special=True, normalized=False) for t in chat]
    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])  # fmt: skip
    backend = byte_level_bpe(pre_tokenizer, normalizers.NFC(), added)
    backend.save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", {
        "add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": added_tokens_decoder(backend),
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": None,
        "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "errors": "replace",
        "model_max_length": MAX_LENGTH, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    })  # fmt: skip
    write_json(folder / "config.json", {"model_type": model_type, "max_position_embeddings": 32768})
    if not named:
        unnamed = {"tokenizer_class": "Qwen2Tokenizer", "model_max_length": MAX_LENGTH}
        write_json(folder / "tokenizer_config.json", unnamed)


# case -> (builder, the class AutoTokenizer picks, the roles the family defines)
FAMILIES: dict[str, tuple[Callable[[Path], None], str, list[str]]] = {
    "gemma2": (lambda f: gemma(f, "gemma2"), "GemmaTokenizer", ["bos", "eos", "pad", "unk"]),
    "gemma3": (lambda f: gemma(f, "gemma3_text"), "GemmaTokenizer", ["bos", "eos", "pad", "unk"]),
    # No role named in the configs: GemmaTokenizer's defaults, <mask> included.
    "gemma2-unnamed": (
        lambda f: gemma(f, "gemma2", named=False), "GemmaTokenizer", ["bos", "eos", "pad", "unk", "mask"]
    ),
    # model_type phi3 is one of transformers' "incorrect Hub tokenizer class" types: TokenizersBackend, not Llama.
    "phi3": (lambda f: phi3(f, add_bos_token=True), "TokenizersBackend", ["bos", "eos", "pad", "unk"]),
    # add_bos_token false in tokenizer_config.json: transformers 5 drops the flag when there is a tokenizer.json,
    # whose template (<s> A) decides.
    "phi3-no-bos": (lambda f: phi3(f, add_bos_token=False), "TokenizersBackend", ["bos", "eos", "pad", "unk"]),
    "phi4-mini": (phi4_mini, "TokenizersBackend", ["bos", "eos", "pad", "unk"]),
    "qwen2": (lambda f: qwen(f, "qwen2"), "Qwen2Tokenizer", ["bos", "eos", "pad", "unk"]),
    "qwen3": (lambda f: qwen(f, "qwen3"), "Qwen2Tokenizer", ["bos", "eos", "pad", "unk"]),
    "qwen3-unnamed": (lambda f: qwen(f, "qwen3", named=False), "Qwen2Tokenizer", ["bos", "eos", "pad", "unk"]),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Tokenizer, Any]:
    """(case, nlpkit's tokenizer, transformers') for one family's folder."""
    build = FAMILIES[request.param][0]
    folder = tmp_path_factory.mktemp(request.param)
    build(folder)
    return request.param, from_pretrained(folder), hf_tokenizer(folder)


def test_ids_and_roles_match_transformers(family: tuple[str, Tokenizer, Any]) -> None:
    case, ours, hf = family
    _, class_name, roles = FAMILIES[case]
    assert type(hf).__name__ == class_name
    assert ours.max_length == MAX_LENGTH and ours.vocab_size == len(hf)
    assert_roles(ours, hf, roles)
    # Pairs: every class here uses TokenizersBackend's template, A then B, <bos> before each when it adds one.
    assert_same_as_transformers(ours, hf, texts=[*TEXTS, *CHAT_TEXTS])


def test_bos_and_eos_as_the_family_adds_them(family: tuple[str, Tokenizer, Any]) -> None:
    case, ours, hf = family
    ids = ours.encode("Hello world").ids
    adds_bos = case.startswith(("gemma", "phi3"))  # the tokenizer.json templates, whatever add_bos_token says
    assert (ids[0] == ours.token_id("bos")) == adds_bos == (hf("Hello world")["input_ids"][0] == hf.bos_token_id)
    assert ids[-1] != ours.token_id("eos")  # none of them appends an end token to a prompt


def test_decode_matches_transformers(family: tuple[str, Tokenizer, Any]) -> None:
    _, ours, hf = family
    texts = [*TEXTS, *CHAT_TEXTS]
    for ids in (e.ids for e in ours.encode_batch(texts)):
        assert ours.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    for text in ROUND_TRIP_TEXTS:  # byte fallback / byte-level: nothing is lost
        assert ours.decode(ours.encode(text).ids) == text


def test_save_and_load_keep_ids(family: tuple[str, Tokenizer, Any], tmp_path: Path) -> None:
    _, ours, _ = family
    ours.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    texts = [*TEXTS, *CHAT_TEXTS]
    assert [e.ids for e in loaded.encode_batch(texts)] == [e.ids for e in ours.encode_batch(texts)]
    pairs = texts[::-1]
    assert [e.ids for e in loaded.encode_batch(texts, pairs)] == [e.ids for e in ours.encode_batch(texts, pairs)]
    assert loaded.special_tokens == ours.special_tokens and loaded.max_length == ours.max_length
