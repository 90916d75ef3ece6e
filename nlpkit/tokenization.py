"""A thin wrapper over the ``tokenizers`` library: load, train, save, encode.

The wrapper adds what the library leaves to its users: which token plays which
role (padding, classification, separator, begin/end of sequence), the maximum
length, and the Hugging Face-style ``tokenizer_config.json`` that records both,
so a saved folder is read back by nlpkit and by ``transformers`` alike.

:func:`from_pretrained` reads the tokenizer of a Hugging Face-format folder:
its ``tokenizer.json`` when there is one, otherwise the older per-family files
(``vocab.txt``, ``vocab.json`` + ``merges.txt``, SentencePiece models), which
it rebuilds as the ``tokenizers`` pipeline that ``transformers`` would use, so
every tokenizer nlpkit holds is a ``tokenizers.Tokenizer`` and saves as one
``tokenizer.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from nlpkit.errors import NlpkitError

__all__ = ["Tokenizer", "from_pretrained", "SPECIAL_TOKEN_ROLES", "TOKENIZER_FILE", "TOKENIZER_CONFIG_FILE"]


TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
MODEL_CONFIG_FILE = "config.json"
# Where save() puts the target-side tokenizer of a translation pair (Marian), beside the source one.
TARGET_FOLDER = "target"
SPECIAL_TOKEN_ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")

# The special tokens of a trained tokenizer, by kind; BERT's and RoBERTa's conventions.
_TRAINED_SPECIALS = {
    "wordpiece": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "bpe": {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>", "mask": "<mask>", "cls": "<s>", "sep": "</s>"},
    # Character-level language models (nanoGPT's shakespeare-char): GPT-2's end-of-text token.
    "char": {"pad": "<pad>", "unk": "<unk>", "eos": "<|endoftext|>"},
}
# Names looked for when a tokenizer.json comes without a tokenizer_config.json.
_WELL_KNOWN = {
    "pad": ["[PAD]", "<pad>", "<|pad|>"],
    "unk": ["[UNK]", "<unk>"],
    "cls": ["[CLS]", "<s>"],
    "sep": ["[SEP]", "</s>"],
    "mask": ["[MASK]", "<mask>"],
    "bos": ["<s>", "<|begin_of_text|>", "<|endoftext|>"],
    "eos": ["</s>", "<|end_of_text|>", "<|endoftext|>"],
}


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with named special tokens and a maximum length.

    Args:
        backend: the ``tokenizers`` object (kept as ``.backend``).
        special_tokens: role -> token text, roles from ``SPECIAL_TOKEN_ROLES``.
        max_length: encodings are truncated to this many tokens.
        target: for a translation pair whose two languages are segmented
            differently (Marian), the tokenizer of the target side, kept as
            ``.target``; ``None`` when one tokenizer serves both sides.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        special_tokens: dict[str, str],
        max_length: int,
        *,
        target: Tokenizer | None = None,
    ) -> None:
        self.backend = backend
        self.target = target
        self.special_tokens = {role: tok for role, tok in special_tokens.items() if tok is not None}
        for role, token in self.special_tokens.items():
            if backend.token_to_id(token) is None:
                raise NlpkitError(f"tokenizer: the {role} token '{token}' is not in the vocabulary")
        self.max_length = max_length
        backend.no_padding()
        backend.enable_truncation(max_length)

    # -- construction ---------------------------------------------------------

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        kind: Literal["wordpiece", "bpe", "char"] = "wordpiece",
        vocab_size: int = 8000,
        min_frequency: int = 2,
        lowercase: bool = True,
        max_length: int = 128,
        length: int | None = None,
    ) -> Tokenizer:
        """Train a WordPiece (BERT-style), byte-level BPE (RoBERTa/GPT-2-style) or character tokenizer.

        A character tokenizer has one token per character seen at least
        ``min_frequency`` times (``vocab_size`` does not apply), decodes by
        joining them, and adds no special tokens to an encoding.

        Byte-level BPE training is deterministic. WordPiece training in
        ``tokenizers`` is not (huggingface/tokenizers#1794: hash-map order
        breaks ties between merges), so two runs on the same data may differ
        slightly; the run folder keeps the tokenizer it trained, and a recipe
        that must be byte-for-byte reproducible uses ``bpe`` or ``file``.

        Args:
            texts: the training text.
            kind: ``wordpiece``, ``bpe`` or ``char``.
            vocab_size: the largest vocabulary to learn (special tokens included).
            min_frequency: merges/pieces seen fewer times are dropped.
            lowercase: lower-case (and, for WordPiece, strip accents) first.
            max_length: the maximum number of tokens of an encoding.
            length: number of texts, for the progress display only.
        """
        specials = _TRAINED_SPECIALS[kind]
        ordered = list(dict.fromkeys(specials.values()))
        if kind == "char":
            return cls._train_characters(texts, specials, min_frequency, lowercase, max_length)
        if kind == "wordpiece":
            backend = tokenizers.Tokenizer(models.WordPiece(unk_token=specials["unk"]))
            backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=lowercase or None)
            backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
            backend.decoder = decoders.WordPiece()
            trainer = trainers.WordPieceTrainer(
                vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=ordered, show_progress=False
            )
        else:
            backend = tokenizers.Tokenizer(models.BPE(unk_token=None))
            if lowercase:
                backend.normalizer = normalizers.Lowercase()
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            backend.decoder = decoders.ByteLevel()
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size,
                min_frequency=min_frequency,
                special_tokens=ordered,
                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                show_progress=False,
            )
        backend.train_from_iterator(texts, trainer, length=length)
        cls_token, sep_token = specials["cls"], specials["sep"]
        cls_id, sep_id = backend.token_to_id(cls_token), backend.token_to_id(sep_token)
        # BERT's and RoBERTa's templates: [CLS] A [SEP] (B [SEP]); <s> A </s> (</s> B </s>).
        pair = f"{cls_token} $A {sep_token} $B:1 {sep_token}:1" if kind == "wordpiece" else f"{cls_token} $A {sep_token} {sep_token} $B {sep_token}"
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls_token} $A {sep_token}",
            pair=pair,
            special_tokens=[(cls_token, cls_id), (sep_token, sep_id)],
        )
        return cls(backend, specials, max_length)

    @classmethod
    def _train_characters(cls, texts: Iterable[str], specials: dict[str, str], min_frequency: int, lowercase: bool,
                          max_length: int) -> Tokenizer:
        from collections import Counter

        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(text.lower() if lowercase else text)
        ordered = list(dict.fromkeys(specials.values()))
        characters = sorted(c for c, n in counts.items() if n >= min_frequency)
        vocab = {token: i for i, token in enumerate(ordered + characters)}
        backend = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token=specials["unk"]))
        if lowercase:
            backend.normalizer = normalizers.Lowercase()
        # Every character (newlines included) is a piece of its own; the decoder joins them without spaces.
        backend.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(r"[\s\S]"), behavior="isolated")
        backend.decoder = decoders.Fuse()
        backend.add_special_tokens(ordered)
        return cls(backend, specials, max_length)

    @classmethod
    def from_file(cls, path: str | Path, max_length: int | None = None) -> Tokenizer:
        """Load a ``tokenizer.json``; roles and length come from ``tokenizer_config.json`` beside it.

        Roles come from ``tokenizer_config.json`` and ``special_tokens_map.json``
        beside the file; a role neither names is looked up among well-known
        token names (``[PAD]``, ``<pad>`` ...). A role set to null stays unset.
        """
        path = Path(path)
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust library raises a plain Exception for bad files
            raise NlpkitError(f"{path}: cannot read tokenizer: {str(error).splitlines()[0]}") from None
        config = _read_json(path.parent / TOKENIZER_CONFIG_FILE)
        named = {**_read_json(path.parent / SPECIAL_TOKENS_MAP_FILE), **config}
        special_tokens = {}
        for role in SPECIAL_TOKEN_ROLES:
            key = f"{role}_token"
            token = named.get(key)
            if isinstance(token, dict):
                token = token.get("content")
            if key not in named:
                token = next((t for t in _WELL_KNOWN[role] if backend.token_to_id(t) is not None), None)
            if token is not None:
                special_tokens[role] = token
        if max_length is None:
            configured = config.get("model_max_length")
            # transformers writes a huge sentinel (1e30) when the length is unknown.
            max_length = int(configured) if isinstance(configured, (int, float)) and configured < 1e9 else 512
        return cls(backend, special_tokens, max_length)

    @classmethod
    def load(cls, folder: str | Path) -> Tokenizer:
        """Load what :meth:`save` wrote into ``folder`` (and its ``target/`` subfolder, if any)."""
        folder = Path(folder)
        tokenizer = cls.from_file(folder / TOKENIZER_FILE)
        if (folder / TARGET_FOLDER / TOKENIZER_FILE).is_file():
            tokenizer.target = cls.load(folder / TARGET_FOLDER)
        return tokenizer

    def save(self, folder: str | Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``folder``; the target side into ``target/``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.target is not None:
            self.target.save(folder / TARGET_FOLDER)
        self.backend.save(str(folder / TOKENIZER_FILE))
        # An unset role is written as null, so that loading does not fill it in with a well-known token.
        config: dict[str, Any] = {f"{role}_token": self.special_tokens.get(role) for role in SPECIAL_TOKEN_ROLES}
        config["model_max_length"] = self.max_length
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    # -- use ------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_id(self, role: str) -> int | None:
        """The id of the special token playing ``role`` (``pad``, ``cls`` ...), or None."""
        token = self.special_tokens.get(role)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def pad_token_id(self) -> int:
        """The padding id (0 when the tokenizer names no padding token)."""
        pad_id = self.token_id("pad")
        return 0 if pad_id is None else pad_id

    def encode_batch(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        add_special_tokens: bool = True,
        truncation: bool = True,
    ) -> list[tokenizers.Encoding]:
        """Encode texts (or text pairs), truncated to ``max_length``; no padding.

        ``truncation=False`` keeps every token: language-model documents are
        cut into blocks later, and a prompt too long for the model must be
        reported rather than silently shortened.
        """
        inputs: list[Any] = list(texts) if pairs is None else list(zip(texts, pairs))
        if truncation:
            return self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        self.backend.no_truncation()
        try:
            return self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)
        finally:
            self.backend.enable_truncation(self.max_length)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)


def from_pretrained(path: str | Path, max_length: int | None = None) -> Tokenizer:
    """Load the tokenizer of a Hugging Face-format folder.

    ``tokenizer.json`` is read when present. Otherwise the folder's family
    (tokenizer_config.json ``tokenizer_class``, else config.json
    ``model_type``, else the files present) decides how its files are rebuilt
    into the ``tokenizers`` pipeline ``transformers`` uses:

    - ``vocab.txt``: BERT WordPiece (BERT, DistilBERT, ELECTRA); lower-casing,
      accent stripping and CJK splitting from ``do_lower_case``,
      ``strip_accents`` and ``tokenize_chinese_chars``; ``[CLS] A [SEP] B [SEP]``
      with type ids 0 and 1.
    - ``vocab.json`` + ``merges.txt``: byte-level BPE, GPT-2 style (no template
      unless ``add_bos_token`` / ``add_eos_token``), or RoBERTa style
      ``<s> A </s></s> B </s>`` for RoBERTa, BART and Longformer; honours
      ``add_prefix_space``.
    - ``spiece.model`` (T5, mT5): SentencePiece unigram, ``extra_ids`` sentinel
      tokens ``<extra_id_N>`` after the pieces, ``</s>`` appended.
    - ``sentencepiece.bpe.model`` (XLM-RoBERTa): fairseq ids (``<s> <pad> </s>
      <unk>``, pieces shifted by one, ``<mask>`` last), RoBERTa template.
    - ``source.spm`` + ``target.spm`` + ``vocab.json`` (Marian): the source
      model segments, ``vocab.json`` gives the ids, ``</s>`` appended; the
      target side (``target_vocab.json`` when ``separate_vocabs``) is
      returned as the ``.target`` tokenizer, for labels and decoding.

    SentencePiece models need the optional ``sentencepiece`` package
    (``pip install "nlpkit[sentencepiece]"``). Special tokens come from
    tokenizer_config.json and special_tokens_map.json (the family's defaults
    otherwise), tokens recorded in ``added_tokens_decoder`` keep their ids and
    options.

    Args:
        path: the local folder.
        max_length: truncate encodings to this many tokens; by default
            tokenizer_config.json ``model_max_length``, capped by config.json
            ``max_position_embeddings`` (less RoBERTa's offset of 2) or
            ``n_positions``, which is also the fallback; 512 when neither says.

    Returns:
        The tokenizer (a Marian folder's has ``.target`` set).

    Raises:
        NlpkitError: the folder is missing or holds no tokenizer files, its
            tokenizer class is not one of the supported ones, a file is
            unreadable, or a SentencePiece model is found without the
            ``sentencepiece`` package.

    Example:
        >>> tokenizer = from_pretrained("models/all-minilm-l6-v2")
        >>> tokenizer.encode_batch(["a sentence"])[0].ids
    """
    from nlpkit._tokenizer_folders import load_folder

    return load_folder(Path(path), max_length)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NlpkitError(f"{path}: not valid JSON: {error}") from None
    return data if isinstance(data, dict) else {}
