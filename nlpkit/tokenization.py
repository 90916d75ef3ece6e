"""A thin wrapper over the ``tokenizers`` library: load, train, save, encode, decode.

The wrapper adds what the library leaves to its users: which token plays which
role (padding, classification, separator, begin/end of sequence), the maximum
length, and the Hugging Face-style ``tokenizer_config.json`` that records both,
so a saved folder is read back by nlpkit and by ``transformers`` alike. Tasks
encode through its methods (one text, pairs, pre-split words, windows over a
long second text, with or without the special-token template) and never touch
the ``tokenizers`` object, so the wrapper alone decides how truncation is set
and restored around each call.

:func:`from_pretrained` reads the tokenizer of a Hugging Face-format folder:
its ``tokenizer.json`` when there is one, otherwise the older per-family files
(``vocab.txt``, ``vocab.json`` + ``merges.txt``, SentencePiece models), which
it rebuilds as the ``tokenizers`` pipeline that ``transformers`` would use, so
every tokenizer nlpkit holds is a ``tokenizers.Tokenizer`` and saves as one
``tokenizer.json``. The file reading lives in ``nlpkit._tokenizer_folders``.

A tokenizer also carries the folder's chat template, if any
(``chat_template.jinja``, or ``chat_template`` in tokenizer_config.json), and
turns conversations into token ids with it as ``transformers``'
``apply_chat_template`` does; the rendering itself is
:mod:`nlpkit.chat_templates`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from nlpkit import chat_templates
from nlpkit._tokenizer_folders import (
    CHAT_TEMPLATE_FILE,
    MODEL_CONFIG_FILE,
    SPECIAL_TOKEN_ROLES,
    SPECIAL_TOKENS_MAP_FILE,
    TARGET_FOLDER,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    TokenizerParts,
    read_folder,
    read_tokenizer_file,
)
from nlpkit.errors import NlpkitError

__all__ = ["Tokenizer", "from_pretrained", "SPECIAL_TOKEN_ROLES", "TOKENIZER_FILE", "TOKENIZER_CONFIG_FILE",
           "SPECIAL_TOKENS_MAP_FILE", "MODEL_CONFIG_FILE", "TARGET_FOLDER", "CHAT_TEMPLATE_FILE"]

# The special tokens of a trained tokenizer, by kind; BERT's and RoBERTa's conventions.
_TRAINED_SPECIALS = {
    "wordpiece": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "bpe": {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>", "mask": "<mask>", "cls": "<s>", "sep": "</s>"},
    # Character-level language models (nanoGPT's shakespeare-char): GPT-2's end-of-text token.
    "char": {"pad": "<pad>", "unk": "<unk>", "eos": "<|endoftext|>"},
}


class Tokenizer:
    """A ``tokenizers.Tokenizer`` with named special tokens and a maximum length.

    ============================================  ==========================================================
    call                                          gives
    ============================================  ==========================================================
    ``encode(text, pair=None)``                   one ``tokenizers.Encoding``
    ``encode_batch(texts, pairs=None)``           texts or pairs of texts, truncated to ``max_length``
    ``encode_words(texts)``                       pre-split words; ``Encoding.word_ids``: each token's word
    ``encode_windows(texts, pairs, stride=N)``    every window of a long second text, with character offsets
    ``add_special_tokens=False``                  (any encode call) leave out the template's special tokens
    ``set_template(False)``                       no special tokens from now on, and in the saved tokenizer
    ``decode(ids)``                               text
    ``add_special_tokens(tokens)``                add tokens (chat markers) as special tokens
    ``token_id(role)``, ``pad_token_id``          ids of the special tokens by role
    ``render_chat(messages)``                     a conversation as text, through the chat template
    ``apply_chat_template(messages)``             its token ids, as ``transformers`` gives them
    ``encode_chat(messages)``                     ``(ids, assistant_mask)``: 1 for the assistant's tokens
    ============================================  ==========================================================

    The chat calls take ``add_generation_prompt`` (end with the opening of an
    assistant turn; not for ``encode_chat``), ``template=`` (a Jinja source
    instead of ``.chat_template``) and any template variable as a keyword
    (``tools``, ``enable_thinking`` ...).

    Args:
        backend: the ``tokenizers`` object (kept as ``.backend``, for reading;
            encode through the methods, which set truncation per call).
        special_tokens: role -> token text, roles from ``SPECIAL_TOKEN_ROLES``.
        max_length: encodings are truncated to this many tokens.
        target: for a translation pair whose two languages are segmented
            differently (Marian), the tokenizer of the target side, kept as
            ``.target``; ``None`` when one tokenizer serves both sides.
        chat_template: the Jinja chat template (``.chat_template``), or None;
            saved as ``chat_template.jinja``.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        special_tokens: dict[str, str],
        max_length: int,
        *,
        target: Tokenizer | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        self.target = target
        self.chat_template = chat_template
        # The file or folder it was read from, for error messages.
        self.source: Path | None = None
        self.special_tokens = {role: tok for role, tok in special_tokens.items() if tok is not None}
        for role, token in self.special_tokens.items():
            if backend.token_to_id(token) is None:
                raise NlpkitError(f"tokenizer: the {role} token '{token}' is not in the vocabulary")
        self.max_length = max_length
        # Where set_template(False) keeps the template, for set_template(True).
        self._template_set_aside: processors.PostProcessor | None = None
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
        trainer: trainers.Trainer
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
        beside the file; a role neither names takes the default of the
        ``tokenizer_class`` for the classes that have their own (Gemma's
        ``<bos>`` ``<eos>`` ``<pad>`` ``<unk>`` ``<mask>``; Qwen2's
        ``<|endoftext|>`` and no ``<bos>``), appended to the vocabulary when
        missing, as ``transformers`` does; otherwise it is looked up among
        well-known token names (``[PAD]``, ``<pad>`` ...). A role set to null
        stays unset. ``add_bos_token`` / ``add_eos_token`` are not read: as in
        ``transformers`` 5, the template of ``tokenizer.json`` decides. The T5,
        XLM-R and DeBERTa-v2 classes are the exception: their pipeline is
        rebuilt around the file's pieces (see :func:`from_pretrained`).
        """
        tokenizer = cls._from_parts(read_tokenizer_file(Path(path), max_length))
        tokenizer.source = Path(path).parent
        return tokenizer

    @classmethod
    def _from_parts(cls, parts: TokenizerParts) -> Tokenizer:
        target = None if parts.target is None else cls._from_parts(parts.target)
        return cls(parts.backend, parts.special_tokens, parts.max_length, target=target,
                   chat_template=parts.chat_template)

    @classmethod
    def load(cls, folder: str | Path) -> Tokenizer:
        """Load what :meth:`save` wrote into ``folder`` (and its ``target/`` subfolder, if any)."""
        folder = Path(folder)
        tokenizer = cls.from_file(folder / TOKENIZER_FILE)
        if (folder / TARGET_FOLDER / TOKENIZER_FILE).is_file():
            tokenizer.target = cls.load(folder / TARGET_FOLDER)
        return tokenizer

    def save(self, folder: str | Path) -> None:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``folder``; the target side into ``target/``.

        A chat template goes into ``chat_template.jinja``, as transformers 5 saves it.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.target is not None:
            self.target.save(folder / TARGET_FOLDER)
        self.backend.save(str(folder / TOKENIZER_FILE))
        # An unset role is written as null, so that loading does not fill it in with a well-known token.
        config: dict[str, Any] = {f"{role}_token": self.special_tokens.get(role) for role in SPECIAL_TOKEN_ROLES}
        config["model_max_length"] = self.max_length
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        # transformers' PreTrainedTokenizerFast returns no token_type_ids unless told to: a BERT-style pair
        # template gives the second text type id 1, and a model trained on pairs (QA, NLI) must get them.
        if self.backend.post_processor is not None and any(self.backend.encode("a", "b").type_ids):
            config["model_input_names"] = ["input_ids", "token_type_ids", "attention_mask"]
        (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if self.chat_template is not None:
            # newline="": the template's own line ends, byte for byte, on every platform.
            (folder / CHAT_TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8", newline="")

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

    def encode(
        self, text: str, pair: str | None = None, *, add_special_tokens: bool = True, truncation: bool = True
    ) -> tokenizers.Encoding:
        """Encode one text, or one pair of texts; see :meth:`encode_batch`."""
        return self.encode_batch([text], None if pair is None else [pair], add_special_tokens, truncation)[0]

    def encode_batch(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        add_special_tokens: bool = True,
        truncation: bool = True,
    ) -> list[tokenizers.Encoding]:
        """Encode texts (or text pairs), truncated to ``max_length``; no padding.

        A pair goes into the template's pair form (BERT: ``[CLS] A [SEP] B
        [SEP]``, type ids 0 then 1); truncation takes tokens from the longer
        text first. ``truncation=False`` keeps every token: language-model
        documents are cut into blocks later, and a prompt too long for the
        model must be reported rather than silently shortened.

        Args:
            texts: the texts, or the first text of each pair.
            pairs: the second text of each pair, as many as ``texts``; None for single texts.
            add_special_tokens: put the template's special tokens around the text(s).
            truncation: cut each encoding to ``max_length`` tokens.

        Returns:
            One ``tokenizers.Encoding`` per text: ``ids``, ``tokens``,
            ``type_ids``, ``offsets`` (each token's ``(start, end)`` character
            offsets into the text it comes from; ``(0, 0)`` for a special
            token) and ``sequence_ids`` (0 or 1: the first or second text of
            a pair; None for a special token).
        """
        inputs: list[Any] = list(texts) if pairs is None else list(zip(texts, pairs))
        with self._truncation(truncation):
            return self.backend.encode_batch(inputs, add_special_tokens=add_special_tokens)

    def encode_words(
        self, texts: Sequence[Sequence[str]], *, add_special_tokens: bool = True, truncation: bool = True
    ) -> list[tokenizers.Encoding]:
        """Encode texts given as pre-split words, keeping track of the word each token comes from.

        Each word is still normalised and split as the tokenizer splits text
        (BERT cuts ``U.S.`` into ``u . s .``); what pre-splitting adds is that
        no token straddles two words.

        Args:
            texts: each text's words.
            add_special_tokens: put the template's special tokens around each text.
            truncation: cut each encoding to ``max_length`` tokens.

        Returns:
            One ``tokenizers.Encoding`` per text. Its ``word_ids`` give each
            token's word (an index into the text's words; None for a special
            token), and its ``offsets`` are character offsets inside that
            word (the ``tokenizers`` convention for pre-split input). A word
            the tokenizer drops entirely (empty, or only a zero-width
            character) has no tokens.
        """
        with self._truncation(truncation):
            return self.backend.encode_batch(
                [list(words) for words in texts], is_pretokenized=True, add_special_tokens=add_special_tokens
            )

    def encode_windows(
        self,
        texts: Sequence[str],
        pairs: Sequence[str],
        *,
        stride: int,
        max_length: int | None = None,
        add_special_tokens: bool = True,
    ) -> list[list[tokenizers.Encoding]]:
        """Encode pairs whose second text may be long (a question and a context) as all the windows covering it.

        Each window holds the whole first text and a stretch of the second,
        at most ``max_length`` tokens with the template; consecutive windows
        share ``stride`` tokens of the second text, so that an answer cut by
        one window's edge lies whole in the next (BERT's SQuAD windows,
        ``doc_stride``). Plain truncation would keep only the first window.
        This is ``tokenizers``' truncation with ``stride`` and
        ``strategy="only_second"``, whose overflowing encodings are the
        windows after the first.

        Args:
            texts: the first text of each pair, kept whole in every window.
            pairs: the second text of each pair, cut into windows.
            stride: tokens of the second text that consecutive windows share (>= 0).
            max_length: the longest window; the tokenizer's ``max_length`` by default.
            add_special_tokens: put the template's special tokens into each window.

        Returns:
            For each pair, its windows in order (one when the pair fits), each
            a ``tokenizers.Encoding`` whose ``sequence_ids`` say which text
            each token belongs to (0 the first, 1 the second, None a special
            token) and whose ``offsets`` are character offsets into that
            text, so that a span of tokens maps back to characters of the
            original context.

        Raises:
            NlpkitError: ``stride`` is negative, or a first text leaves no
                room for more than ``stride`` tokens of the second.

        Example:
            >>> windows = tokenizer.encode_windows(["Who visited?"], [context], stride=32)[0]
            >>> start, end = windows[1].offsets[7]   # context[start:end] is the 8th token's text
        """
        length = self.max_length if max_length is None else max_length
        if stride < 0:
            raise NlpkitError(f"stride: expected an integer >= 0, got {stride}")
        specials = self.backend.num_special_tokens_to_add(is_pair=True) if add_special_tokens else 0
        # tokenizers fails (or panics, for the stride) on a first text that leaves too little room: say why instead.
        firsts = self.encode_batch(texts, add_special_tokens=False, truncation=False)
        for number, first in enumerate(firsts):
            room = length - specials - len(first.ids)
            if room <= stride:
                raise NlpkitError(
                    f"text {number + 1}: its {len(first.ids)} tokens leave {max(room, 0)} of the {length} tokens of a "
                    f"window for the second text, which needs more than the stride ({stride})"
                )
        with self._truncation(True, length, stride=stride, strategy="only_second"):
            encodings = self.backend.encode_batch(list(zip(texts, pairs, strict=True)),
                                                  add_special_tokens=add_special_tokens)
        return [[encoding, *encoding.overflowing] for encoding in encodings]

    @property
    def has_template(self) -> bool:
        """Whether ``add_special_tokens=True`` puts special tokens around a text (``[CLS] A [SEP]`` ...)."""
        return self.backend.post_processor is not None

    def set_template(self, enabled: bool) -> None:
        """Turn the special-token template on or off for every later encoding, and in the saved tokenizer.

        Off, encoding adds no special tokens whatever ``add_special_tokens``
        says. A task that marks sequences itself (a language model ends each
        document with its end-of-text token) turns it off once; the run
        folder and its export keep it off, so text is encoded for prediction
        as it was for training. To leave out the special tokens of one call
        only, pass ``add_special_tokens=False`` instead.

        Raises:
            NlpkitError: turning on a template this tokenizer never had (one
                saved or loaded without it).
        """
        if not enabled and self.backend.post_processor is not None:
            self._template_set_aside = self.backend.post_processor
            self.backend.post_processor = None
        elif enabled and self.backend.post_processor is None:
            if self._template_set_aside is None:
                raise NlpkitError("tokenizer: it has no special-token template to turn on")
            self.backend.post_processor = self._template_set_aside

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of token ids: the decoder joins subwords (``##``, ``Ġ``, ``▁``) back into words.

        Args:
            ids: token ids, as an encoding's ``ids``.
            skip_special_tokens: leave out special tokens (``[CLS]``, ``</s>`` ...).
        """
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def special_token_ids(self) -> set[int]:
        """The ids of every special token: the named roles' and the other added special tokens (chat markers ...)."""
        added = {i for i, token in self.backend.get_added_tokens_decoder().items() if token.special}
        return added | {i for role in self.special_tokens if (i := self.token_id(role)) is not None}

    def add_special_tokens(self, tokens: Sequence[str]) -> list[str]:
        """Add tokens the vocabulary lacks as special tokens (never split, skipped when decoding); returns those added.

        They take the next ids, after the vocabulary, and are saved with the tokenizer.
        """
        missing = [token for token in tokens if self.backend.token_to_id(token) is None]
        if missing:
            self.backend.add_special_tokens(missing)
        return missing

    # -- chat ------------------------------------------------------------------

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = False,
        *,
        template: str | None = None,
        **variables: Any,
    ) -> str:
        """A conversation as text, through the chat template (see :func:`nlpkit.chat_templates.render`).

        Args:
            messages: ``{"role", "content"}`` mappings.
            add_generation_prompt: end with the opening of an assistant turn.
            template: a Jinja template to use instead of ``.chat_template``.
            **variables: template variables (``tools``, ``enable_thinking`` ...).

        Raises:
            NlpkitError: no template, or the template rejects the conversation.
        """
        return chat_templates.render(
            self._chat_template(template), messages, add_generation_prompt=add_generation_prompt,
            special_tokens=self._template_special_tokens(), **variables,
        )  # fmt: skip

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = False,
        *,
        template: str | None = None,
        **variables: Any,
    ) -> list[int]:
        """The token ids of a conversation, as ``transformers``' ``apply_chat_template(messages, tokenize=True)``.

        The rendered text is encoded without the special-token template and
        without truncation, as transformers does: a template writes its own
        ``{{ bos_token }}``, so adding one would give two.

        Args: as :meth:`render_chat`.

        Raises:
            NlpkitError: no template, or the template rejects the conversation.
        """
        text = self.render_chat(messages, add_generation_prompt, template=template, **variables)
        return list(self.encode(text, add_special_tokens=False, truncation=False).ids)

    def encode_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        template: str | None = None,
        **variables: Any,
    ) -> chat_templates.ChatEncoding:
        """A conversation's ids and assistant mask, for supervised fine-tuning.

        ``ids`` are :meth:`apply_chat_template`'s; ``assistant_mask`` is 1 for
        each token of an assistant turn (its content and end-of-turn token),
        found through the template's ``{% generation %}`` markers or by
        rendering the conversation turn by turn (see
        :func:`nlpkit.chat_templates.assistant_spans`). Not truncated.

        Args:
            messages: the conversation, ending with the last turn to train on.
            template: a Jinja template to use instead of ``.chat_template``.
            **variables: template variables.

        Returns:
            ``ChatEncoding(ids, assistant_mask)``, which unpacks as a pair.

        Raises:
            NlpkitError: no template, the template rejects the conversation,
                or an assistant turn cannot be located in its rendering.
        """
        def encode(text: str) -> tuple[list[int], list[tuple[int, int]]]:
            encoding = self.encode(text, add_special_tokens=False, truncation=False)
            return encoding.ids, encoding.offsets

        return chat_templates.assistant_mask(
            self._chat_template(template), messages, encode, special_tokens=self._template_special_tokens(),
            **variables,
        )  # fmt: skip

    def _chat_template(self, template: str | None) -> str:
        if template is not None:
            return template
        if self.chat_template is None:
            where = f"the tokenizer of {self.source}" if self.source is not None else "this tokenizer"
            raise NlpkitError(
                f"{where} has no chat template: give one with 'generation.chat_template: FILE' in the recipe, "
                f"or put a {CHAT_TEMPLATE_FILE} in the folder"
            )
        return self.chat_template

    def _template_special_tokens(self) -> dict[str, str]:
        """The special tokens as templates name them (``bos_token`` ...), as transformers' ``special_tokens_map``."""
        return {f"{role}_token": token for role, token in self.special_tokens.items()}

    @contextmanager
    def _truncation(
        self, enabled: bool, max_length: int | None = None, stride: int = 0, strategy: str = "longest_first"
    ) -> Iterator[None]:
        # The backend holds one truncation setting for every call: set this call's, then the default again.
        if enabled:
            self.backend.enable_truncation(max_length or self.max_length, stride=stride, strategy=strategy)
        else:
            self.backend.no_truncation()
        try:
            yield
        finally:
            self.backend.enable_truncation(self.max_length)


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
    - ``spm.model`` (DeBERTa-v2 / v3, mDeBERTa): SentencePiece unigram, the
      pieces' own ids (``[PAD] [CLS] [SEP] [UNK]`` first, ``[MASK]`` added
      last), normalised as transformers' ``DebertaV2Tokenizer`` does since
      5.25 (the model's own compiled normaliser, as SentencePiece applies
      it, then runs of spaces to one), honours
      ``do_lower_case`` and ``split_by_punct``; ``[CLS] A [SEP] B [SEP]``
      with type ids 0 and 1.
    - ``source.spm`` + ``target.spm`` + ``vocab.json`` (Marian): the source
      model segments, ``vocab.json`` gives the ids, ``</s>`` appended; the
      target side (``target_vocab.json`` when ``separate_vocabs``) is
      returned as the ``.target`` tokenizer, for labels and decoding.

    A ``tokenizer.json`` whose ``tokenizer_class`` is ``T5Tokenizer``,
    ``XLMRobertaTokenizer`` or ``DebertaV2Tokenizer`` (mT5, XLM-R,
    multilingual-e5, bge-m3, DeBERTa-v3 ...) is rebuilt as those families'
    SentencePiece models are, from the file's Unigram pieces alone, because
    ``transformers`` 5 ignores the rest of such a file; T5's ``extra_ids``
    sentinels missing from the pieces are appended, ``<extra_id_0>`` first.

    SentencePiece models need the optional ``sentencepiece`` package
    (``pip install "nlpkit[sentencepiece]"``). Special tokens come from
    tokenizer_config.json and special_tokens_map.json (the family's defaults
    otherwise), tokens recorded in ``added_tokens_decoder`` keep their ids and
    options. ``clean_up_tokenization_spaces`` (``" ."`` -> ``"."`` ...) is
    applied when decoding, except for BPE models, as in ``transformers`` 5.

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
    tokenizer = Tokenizer._from_parts(read_folder(Path(path), max_length))
    tokenizer.source = Path(path)
    return tokenizer

