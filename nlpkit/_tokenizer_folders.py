"""Reading tokenizer files: a ``tokenizer.json`` with its configs, or the older per-family files, rebuilt.

The machinery behind :meth:`nlpkit.tokenization.Tokenizer.from_file` and
:func:`nlpkit.tokenization.from_pretrained`: which special token plays which
role, the maximum length, and for folders without a ``tokenizer.json`` the
per-family readers of ``vocab.txt``, ``vocab.json`` + ``merges.txt`` and
SentencePiece models, following what ``transformers``'
``convert_slow_tokenizer.py`` builds, so the token ids equal
``transformers``' (tests/unit/test_tokenizer_folders.py checks them).

This module hands back :class:`TokenizerParts`, not a ``Tokenizer``: it
imports nothing from :mod:`nlpkit.tokenization`, which imports it, so the two
never form an import cycle.
"""

from __future__ import annotations

import base64
import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import tokenizers
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors

from nlpkit.errors import NlpkitError

__all__ = ["TokenizerParts", "read_tokenizer_file", "read_folder", "read_chat_template", "SPECIAL_TOKEN_ROLES",
           "TOKENIZER_FILE", "TOKENIZER_CONFIG_FILE", "SPECIAL_TOKENS_MAP_FILE", "MODEL_CONFIG_FILE", "TARGET_FOLDER",
           "CHAT_TEMPLATE_FILE"]

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
MODEL_CONFIG_FILE = "config.json"
# transformers 5 saves the chat template here, beside tokenizer_config.json, and prefers it to the config's.
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# Where a translation pair's target-side tokenizer (Marian) is saved, beside the source one.
TARGET_FOLDER = "target"
SPECIAL_TOKEN_ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")

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

# The roles of the transformers tokenizer classes that rebuild a tokenizer.json's pipeline themselves, when the
# configs do not name them: the class's own defaults (its __init__ arguments), not the well-known names above.
# Gemma's order is <pad> <eos> <bos> <unk> <mask>; Qwen2 has no <bos> and uses <|endoftext|> for the rest.
_CLASS_SPECIALS: dict[str, dict[str, str]] = {
    "GemmaTokenizer": {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>", "mask": "<mask>"},
    "Qwen2Tokenizer": {"eos": "<|endoftext|>", "pad": "<|endoftext|>", "unk": "<|endoftext|>"},
}


@dataclass
class TokenizerParts:
    """What a ``nlpkit.tokenization.Tokenizer`` is made of, as read from files.

    Attributes:
        backend: the ``tokenizers`` pipeline.
        special_tokens: role -> token text.
        max_length: the longest encoding.
        target: a translation pair's target side (Marian), or None.
        chat_template: the folder's chat template (Jinja source), or None.
    """

    backend: tokenizers.Tokenizer
    special_tokens: dict[str, str]
    max_length: int
    target: TokenizerParts | None = None
    chat_template: str | None = None


def read_tokenizer_file(path: Path, max_length: int | None) -> TokenizerParts:
    """See :meth:`nlpkit.tokenization.Tokenizer.from_file`."""
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust library raises a plain Exception for bad files
        raise NlpkitError(f"{path}: cannot read tokenizer: {str(error).splitlines()[0]}") from None
    config = _read_json(path.parent / TOKENIZER_CONFIG_FILE)
    rebuilt = _rebuilt_tokenizer_file(path, config, max_length)
    if rebuilt is not None:
        rebuilt.chat_template = read_chat_template(path.parent, config)
        return rebuilt
    named = {**_read_json(path.parent / SPECIAL_TOKENS_MAP_FILE), **config}
    tokenizer_class = config.get("tokenizer_class")
    defaults = _CLASS_SPECIALS.get(tokenizer_class.removesuffix("Fast")) if isinstance(tokenizer_class, str) else None
    special_tokens = {}
    for role in SPECIAL_TOKEN_ROLES:
        key = f"{role}_token"
        token = named.get(key)
        if isinstance(token, dict):
            token = token.get("content")
        if key not in named:
            if defaults is not None:
                token = defaults.get(role)
            else:
                token = next((t for t in _WELL_KNOWN[role] if backend.token_to_id(t) is not None), None)
        if token is not None:
            special_tokens[role] = token
    # transformers adds a class's default special token the vocabulary lacks, in its role order, at the next free id.
    for role in _ROLE_ORDER:
        token = special_tokens.get(role)
        if defaults is not None and f"{role}_token" not in named and token and backend.token_to_id(token) is None:
            backend.add_special_tokens([tokenizers.AddedToken(token, special=True, normalized=False)])
    if max_length is None:
        configured = config.get("model_max_length")
        # transformers writes a huge sentinel (1e30) when the length is unknown.
        max_length = int(configured) if isinstance(configured, (int, float)) and configured < 1e9 else 512
    _clean_up_spaces(backend, config)
    return TokenizerParts(backend, special_tokens, max_length, chat_template=read_chat_template(path.parent, config))


def read_chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    """The folder's chat template: ``chat_template.jinja``, else tokenizer_config.json ``chat_template``.

    The file wins, as in transformers 5. The config holds a string, or (older
    folders with several templates) a list of ``{"name", "template"}``
    entries, of which the one named ``default`` is used; without one there
    is no template (a warning names the others). None when the folder has none.
    """
    path = folder / CHAT_TEMPLATE_FILE
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise NlpkitError(f"{path}: cannot read the chat template: {error}") from None
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    entries = template if isinstance(template, list) else []
    if not all(isinstance(entry, dict) and isinstance(entry.get("template"), str) for entry in entries) or not entries:
        raise NlpkitError(f"{folder / TOKENIZER_CONFIG_FILE}: chat_template: expected a string or a list of "
                          "{name, template} entries")
    named = {entry.get("name"): entry["template"] for entry in entries}
    if "default" not in named:
        logger.warning("%s: chat_template names %s but no 'default'; no chat template is used",
                       folder / TOKENIZER_CONFIG_FILE, ", ".join(map(str, named)))
    return named.get("default")


def _rebuilt_tokenizer_file(path: Path, config: dict[str, Any], max_length: int | None) -> TokenizerParts | None:
    """A tokenizer.json of a class that transformers 5 rebuilds from the vocabulary alone, rebuilt the same way.

    ``T5Tokenizer``, ``XLMRobertaTokenizer`` and ``DebertaV2Tokenizer`` take
    only the Unigram pieces (and SentencePiece's compiled normaliser) from the
    file, and build the normaliser, pre-tokenizer, decoder, template and
    special tokens from their own code and the configs, as they do from a
    SentencePiece model: the file's other parts (converted by older
    versions, or by ``convert_slow_tokenizer`` with other settings) are
    ignored. None for any other file.
    """
    tokenizer_class = config.get("tokenizer_class")
    family = _REBUILT_CLASSES.get(tokenizer_class.removesuffix("Fast")) if isinstance(tokenizer_class, str) else None
    if family is None:
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        model = data["model"]
        if model.get("type") != "Unigram":
            return None
        vocab = [(str(piece), float(score)) for piece, score in model["vocab"]]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise NlpkitError(f"{path}: not a Unigram tokenizer.json: {error}") from None
    # SentencePiece's compiled normaliser, which the T5 and XLM-R classes keep (base64 in the file).
    normalizer = data.get("normalizer") or {}
    steps = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    compiled = [step.get("precompiled_charsmap") for step in steps if step.get("type") == "Precompiled"]
    charsmap = base64.b64decode(compiled[0]) if compiled and compiled[0] else b""
    named = {**_read_json(path.parent / SPECIAL_TOKENS_MAP_FILE), **config}
    roles = _roles(family, named)
    backend = _unigram_pipeline(family, vocab, charsmap, config, roles)
    length = _max_length(config, _read_json(path.parent / MODEL_CONFIG_FILE)) if max_length is None else max_length
    return _assemble(path.parent, backend, family, named, roles, length)


def _clean_up_spaces(backend: tokenizers.Tokenizer, config: dict[str, Any]) -> None:
    """transformers' ``clean_up_tokenization_spaces``: " ." -> "." and the like, after decoding, as a decoder step.

    transformers 5 skips it for BPE models (it would remove real spaces), unless
    ``clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output``.
    """
    forced = config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output")
    if not config.get("clean_up_tokenization_spaces") or backend.decoder is None:
        return
    if isinstance(backend.model, models.BPE) and not forced:
        return
    # Fuse first: the replacements apply to the whole text, not to each token (tokenization_utils_base.py).
    cleanups = [decoders.Replace(before, after) for before, after in _CLEAN_UPS]
    backend.decoder = decoders.Sequence([backend.decoder, decoders.Fuse(), *cleanups])


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NlpkitError(f"{path}: not valid JSON: {error}") from None
    return data if isinstance(data, dict) else {}


# -- Hugging Face folders -------------------------------------------------------------------------------------------

# The tokenizer families a folder without a tokenizer.json may hold, by tokenizer_config.json `tokenizer_class`
# (a "Fast" suffix dropped) or config.json `model_type`. A closed set on purpose: MPNet, CLIP, Qwen2 ... ship the
# same file names with other special tokens and rules, and must fail loudly rather than tokenize wrongly.
_FAMILIES = {
    "BertTokenizer": "bert", "DistilBertTokenizer": "bert", "ElectraTokenizer": "bert",
    "bert": "bert", "distilbert": "bert", "electra": "bert",
    "GPT2Tokenizer": "gpt2", "gpt2": "gpt2",
    "RobertaTokenizer": "roberta", "BartTokenizer": "roberta", "LongformerTokenizer": "roberta",
    "roberta": "roberta", "bart": "roberta", "longformer": "roberta",
    "T5Tokenizer": "t5", "t5": "t5", "mt5": "t5", "umt5": "t5",
    "XLMRobertaTokenizer": "xlm-roberta", "xlm-roberta": "xlm-roberta",
    "MarianTokenizer": "marian", "marian": "marian",
    "DebertaV2Tokenizer": "deberta-v2", "deberta-v2": "deberta-v2",
}  # fmt: skip
# The transformers 5 classes that rebuild a Unigram tokenizer.json around its pieces (see _rebuilt_tokenizer_file).
_REBUILT_CLASSES = {"T5Tokenizer": "t5", "XLMRobertaTokenizer": "xlm-roberta", "DebertaV2Tokenizer": "deberta-v2"}
# transformers' clean_up_tokenization, in its order.
_CLEAN_UPS = [(" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
              (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")]
# The files each family reads; a folder that names no family gets the first whose files are all there.
_FAMILY_FILES = {
    "marian": ("source.spm", "target.spm", "vocab.json"),
    "t5": ("spiece.model",),
    "xlm-roberta": ("sentencepiece.bpe.model",),
    "deberta-v2": ("spm.model",),
    "bert": ("vocab.txt",),
    "gpt2": ("vocab.json", "merges.txt"),
    "roberta": ("vocab.json", "merges.txt"),
}
# Each family's special tokens when the folder's configs do not name them (transformers' class defaults).
_ROBERTA_SPECIALS = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>", "mask": "<mask>", "cls": "<s>",
                     "sep": "</s>"}
_FAMILY_SPECIALS: dict[str, dict[str, str]] = {
    "bert": {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"},
    "gpt2": {"unk": "<|endoftext|>", "bos": "<|endoftext|>", "eos": "<|endoftext|>"},
    "roberta": _ROBERTA_SPECIALS,
    "xlm-roberta": _ROBERTA_SPECIALS,
    "t5": {"eos": "</s>", "unk": "<unk>", "pad": "<pad>"},
    "marian": {"eos": "</s>", "unk": "<unk>", "pad": "<pad>"},
    "deberta-v2": {"bos": "[CLS]", "eos": "[SEP]", "unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]",
                   "mask": "[MASK]"},
}
# transformers adds the named special tokens in this order; a token missing from the vocabulary takes the next
# free id, so the order decides ids.
_ROLE_ORDER = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
# fairseq-style models (RoBERTa and kin) reserve the first two rows of the position table (padding offset), so
# their config's max_position_embeddings is two more than the longest usable input.
_POSITION_OFFSET_TYPES = {"roberta", "xlm-roberta", "camembert", "longformer"}
_SPIECE_UNDERLINE = "\u2581"
# Marian: put around each run of characters a side's SentencePiece model does not know (Unicode noncharacters,
# which no text holds), so that the whole run can be looked up in vocab.json (see _marian).
_RUN_START, _RUN_END = "\ufdd0", "\ufdd1"


def read_folder(folder: Path, max_length: int | None) -> TokenizerParts:
    """See :func:`nlpkit.tokenization.from_pretrained`."""
    if not folder.is_dir():
        raise NlpkitError(
            f"{folder}: no such folder; tokenizers are read from local folders only (nlpkit downloads nothing)"
        )
    config = _read_json(folder / TOKENIZER_CONFIG_FILE)
    model_config = _read_json(folder / MODEL_CONFIG_FILE)
    if max_length is None:
        max_length = _max_length(config, model_config)
    if (folder / TOKENIZER_FILE).is_file():
        return read_tokenizer_file(folder / TOKENIZER_FILE, max_length)
    family = _family(folder, config, model_config)
    named = {**_read_json(folder / SPECIAL_TOKENS_MAP_FILE), **config}
    roles = _roles(family, named)
    if family == "marian":
        codes = [] if config.get("separate_vocabs") else _language_codes(folder / "vocab.json")
        target_vocab = "target_vocab.json" if config.get("separate_vocabs") else "vocab.json"
        target_side = _marian(folder, "target.spm", target_vocab, roles, codes)
        target = _assemble(folder, target_side, family, named, roles, max_length, codes)
        source_side = _marian(folder, "source.spm", "vocab.json", roles, codes)
        parts = _assemble(folder, source_side, family, named, roles, max_length, codes, target=target)
    else:
        build = {
            "bert": _wordpiece, "gpt2": _byte_level_bpe, "roberta": _byte_level_bpe, "t5": _t5,
            "xlm-roberta": _xlm_roberta, "deberta-v2": _deberta_v2,
        }  # fmt: skip
        parts = _assemble(folder, build[family](folder, config, roles), family, named, roles, max_length)
    parts.chat_template = read_chat_template(folder, config)
    return parts


def _family(folder: Path, config: dict[str, Any], model_config: dict[str, Any]) -> str:
    """The folder's tokenizer family: its tokenizer class, else its model type, else its files."""
    tokenizer_class = config.get("tokenizer_class")
    model_type = model_config.get("model_type")
    if isinstance(tokenizer_class, str):
        name = tokenizer_class.removesuffix("Fast")
        if name not in _FAMILIES:
            known = sorted({n for n in _FAMILIES if n.endswith("Tokenizer")})
            raise NlpkitError(
                f"{folder / TOKENIZER_CONFIG_FILE}: tokenizer_class '{tokenizer_class}' cannot be read without a "
                f"{TOKENIZER_FILE}; known: {', '.join(known)}"
            )
        family = _FAMILIES[name]
    elif isinstance(model_type, str) and model_type in _FAMILIES:
        family = _FAMILIES[model_type]
    else:
        family = next((f for f, files in _FAMILY_FILES.items() if all((folder / n).is_file() for n in files)), "")
        if not family:
            looked_for = [TOKENIZER_FILE, *dict.fromkeys(" + ".join(files) for files in _FAMILY_FILES.values())]
            raise NlpkitError(f"{folder}: no tokenizer files; looked for {', '.join(looked_for)}")
    missing = [name for name in _FAMILY_FILES[family] if not (folder / name).is_file()]
    if missing:
        needed = f"{TOKENIZER_FILE} or {' + '.join(_FAMILY_FILES[family])}"
        raise NlpkitError(f"{folder}: a {family} tokenizer needs {needed}; missing {', '.join(missing)}")
    return family


def _max_length(config: dict[str, Any], model_config: dict[str, Any]) -> int:
    configured = config.get("model_max_length")
    # transformers writes a huge sentinel (1e30) when the length is unknown.
    length = int(configured) if isinstance(configured, (int, float)) and 0 < configured < 1e9 else None
    positions = model_config.get("max_position_embeddings", model_config.get("n_positions"))
    if isinstance(positions, int) and positions > 0:
        if model_config.get("model_type") in _POSITION_OFFSET_TYPES:
            positions -= 2
        length = positions if length is None else min(length, positions)
    return 512 if length is None else length


def _roles(family: str, named: dict[str, Any]) -> dict[str, tokenizers.AddedToken]:
    """Role -> special token, from the folder's configs or the family's defaults; a role set to null stays unset."""
    roles = {}
    for role in SPECIAL_TOKEN_ROLES:
        key = f"{role}_token"
        value = named[key] if key in named else _FAMILY_SPECIALS[family].get(role)
        if value is not None:
            roles[role] = _added_token(value)
    return roles


def _added_token(value: str | dict[str, Any], special: bool = True) -> tokenizers.AddedToken:
    """A token from a config entry: plain text, or transformers' serialised AddedToken with its options."""
    if isinstance(value, dict):
        flags = ("single_word", "lstrip", "rstrip", "normalized", "special")
        options = {"special": special, **{flag: bool(value[flag]) for flag in flags if flag in value}}
        return tokenizers.AddedToken(str(value["content"]), **options)
    return tokenizers.AddedToken(str(value), special=special)


def _assemble(
    folder: Path,
    backend: tokenizers.Tokenizer,
    family: str,
    named: dict[str, Any],
    roles: dict[str, tokenizers.AddedToken],
    max_length: int,
    language_codes: Sequence[str] = (),
    target: TokenizerParts | None = None,
) -> TokenizerParts:
    """Register the added and special tokens as transformers does, then the family's template."""
    added: set[str] = set()

    def add(token: tokenizers.AddedToken) -> None:
        if token.content not in added:
            added.add(token.content)
            (backend.add_special_tokens if token.special else backend.add_tokens)([token])

    recorded = named.get("added_tokens_decoder") or {}
    for token_id, value in sorted(((int(i), v) for i, v in recorded.items()), key=lambda item: item[0]):
        token = _added_token(value, special=False)
        add(token)
        if backend.token_to_id(token.content) != token_id:
            raise NlpkitError(
                f"{folder / TOKENIZER_CONFIG_FILE}: added token '{token.content}' has id {token_id} in "
                f"added_tokens_decoder but {backend.token_to_id(token.content)} in the vocabulary files"
            )
    for role in _ROLE_ORDER:
        if role in roles:
            add(roles[role])
    extras = named.get("additional_special_tokens") or named.get("extra_special_tokens") or []
    for value in [*extras, *_default_extras(family, named)]:
        add(_added_token(value))
    for code in language_codes:  # ordinary tokens to transformers: kept when decoding skips special tokens
        add(tokenizers.AddedToken(code, special=False, normalized=False))
    backend.post_processor = _post_processor(folder, family, backend, {r: t.content for r, t in roles.items()}, named)
    _clean_up_spaces(backend, named)
    return TokenizerParts(backend, {role: token.content for role, token in roles.items()}, max_length, target)


def _default_extras(family: str, named: dict[str, Any]) -> list[str]:
    # T5's sentinels, <extra_id_0> first, as T5Tokenizer lists them in additional_special_tokens: a vocabulary
    # without them (an mT5 tokenizer.json converted with extra_ids 0, read with the default 100) gets them in this
    # order after its pieces; SentencePiece models get them in the vocabulary, reversed, first (see _t5).
    return [f"<extra_id_{i}>" for i in range(int(named.get("extra_ids", 100)))] if family == "t5" else []


def _post_processor(
    folder: Path, family: str, backend: tokenizers.Tokenizer, roles: dict[str, str], config: dict[str, Any]
) -> processors.PostProcessor:
    """The family's template: where its special tokens go around one text or a pair, and the type ids."""

    def special(role: str) -> tuple[str, int]:
        token_id = backend.token_to_id(roles[role]) if role in roles else None
        if token_id is None:
            raise NlpkitError(f"{folder}: a {family} tokenizer needs a {role} token; the folder's configs unset it")
        return roles[role], token_id

    if family in ("bert", "deberta-v2"):  # [CLS] A [SEP] B [SEP], segment ids 0 then 1
        (cls, cls_id), (sep, sep_id) = special("cls"), special("sep")
        return processors.TemplateProcessing(
            single=[cls, "$A", sep],
            pair=[cls, "$A", sep, "$B:1", f"{sep}:1"],
            special_tokens=[(cls, cls_id), (sep, sep_id)],
        )
    if family == "roberta":  # <s> A </s></s> B </s>
        return processors.RobertaProcessing(
            special("sep"),
            special("cls"),
            trim_offsets=bool(config.get("trim_offsets", True)),
            add_prefix_space=bool(config.get("add_prefix_space", False)),
        )
    if family == "xlm-roberta":
        (bos, bos_id), (eos, eos_id) = special("bos"), special("eos")
        return processors.TemplateProcessing(
            single=[bos, "$A", eos],
            pair=[bos, "$A", eos, eos, "$B", eos],
            special_tokens=[(bos, bos_id), (eos, eos_id)],
        )
    if family in ("t5", "marian"):  # T5: A </s> B </s>; Marian: A B </s>
        eos, eos_id = special("eos")
        pair = ["$A", eos, "$B", eos] if family == "t5" else ["$A", "$B", eos]
        return processors.TemplateProcessing(single=["$A", eos], pair=pair, special_tokens=[(eos, eos_id)])
    # GPT-2: nothing added unless the folder asks for <bos> / <eos> (transformers' add_bos_token / add_eos_token).
    added = dict(special(role) for role in ("bos", "eos") if config.get(f"add_{role}_token"))
    first = [roles["bos"]] if config.get("add_bos_token") else []
    last = [roles["eos"]] if config.get("add_eos_token") else []
    return processors.TemplateProcessing(
        single=[*first, "$A", *last],
        pair=[*first, "$A", *last, *(f"{t}:1" for t in first), "$B:1", *(f"{t}:1" for t in last)],
        special_tokens=list(added.items()),
    )


# -- the per-family pipelines ---------------------------------------------------------------------------------------


def _wordpiece(folder: Path, config: dict[str, Any], roles: dict[str, tokenizers.AddedToken]) -> tokenizers.Tokenizer:
    """BERT's WordPiece, as transformers' BertTokenizer builds it from vocab.txt."""
    path = folder / "vocab.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise NlpkitError(f"{path}: not UTF-8 text: {error}") from None
    # One token per line, its id the line number; a repeated token keeps its last line (transformers' load_vocab).
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab = {token: index for index, token in enumerate(lines)}
    unk = roles["unk"].content if "unk" in roles else "[UNK]"
    backend = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token=unk))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        strip_accents=config.get("strip_accents"),  # None: follow lowercase, as the original BERT does
        lowercase=bool(config.get("do_lower_case", True)),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def _byte_level_bpe(
    folder: Path, config: dict[str, Any], roles: dict[str, tokenizers.AddedToken]
) -> tokenizers.Tokenizer:
    """GPT-2's byte-level BPE (RoBERTa's too: only the template differs)."""
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    try:
        vocab, merges = models.BPE.read_file(str(vocab_path), str(merges_path))
    except Exception as error:  # the Rust library raises a plain Exception for bad files
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise NlpkitError(f"{folder}: cannot read vocab.json / merges.txt: {reason}") from None
    # No unknown token: 256 byte symbols cover any text (transformers' GPT2Tokenizer and RobertaTokenizer).
    model = models.BPE(vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False)
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
    backend.decoder = decoders.ByteLevel()
    return backend


def _t5(folder: Path, config: dict[str, Any], roles: dict[str, tokenizers.AddedToken]) -> tokenizers.Tokenizer:
    """T5's SentencePiece unigram model and sentinels, as transformers' T5Tokenizer converts spiece.model."""
    model = _read_sentencepiece(folder / "spiece.model")
    # The sentinels follow the pieces in the vocabulary, <extra_id_99> first (T5Converter).
    sentinels = [(token, 0.0) for token in reversed(_default_extras("t5", config))]
    vocab = [(piece, score) for piece, score, _ in model.pieces] + sentinels
    return _unigram_pipeline("t5", vocab, model.charsmap, config, roles)


def _xlm_roberta(
    folder: Path, config: dict[str, Any], roles: dict[str, tokenizers.AddedToken]
) -> tokenizers.Tokenizer:
    """XLM-RoBERTa: fairseq's dictionary order around the SentencePiece pieces (transformers' XLMRobertaConverter).

    fairseq puts ``<s> <pad> </s> <unk>`` first, then the pieces after SentencePiece's own three specials (so
    every piece id is shifted by one), then ``<mask>``.
    """
    model = _read_sentencepiece(folder / "sentencepiece.bpe.model")
    token = {role: roles[role].content if role in roles else _ROBERTA_SPECIALS[role] for role in _ROBERTA_SPECIALS}
    head = [(token["bos"], 0.0), (token["pad"], 0.0), (token["eos"], 0.0), (token["unk"], 0.0)]
    vocab = head + [(piece, score) for piece, score, _ in model.pieces[3:]] + [(token["mask"], 0.0)]
    return _unigram_pipeline("xlm-roberta", vocab, model.charsmap, config, roles)


def _deberta_v2(
    folder: Path, config: dict[str, Any], roles: dict[str, tokenizers.AddedToken]
) -> tokenizers.Tokenizer:
    """DeBERTa-v2 / v3 / mDeBERTa: spm.model's pieces in their own order (``[PAD] [CLS] [SEP] [UNK]`` first)."""
    model = _read_sentencepiece(folder / "spm.model")
    vocab = [(piece, score) for piece, score, _ in model.pieces]
    return _unigram_pipeline("deberta-v2", vocab, model.charsmap, config, roles)


def _unigram_pipeline(
    family: str,
    vocab: list[tuple[str, float]],
    charsmap: bytes,
    config: dict[str, Any],
    roles: dict[str, tokenizers.AddedToken],
) -> tokenizers.Tokenizer:
    """The pipeline transformers 5's T5, XLM-R and DeBERTa-v2 classes build around a Unigram vocabulary.

    T5 and XLM-R (tokenization_t5.py, tokenization_xlm_roberta.py): SentencePiece's
    compiled normaliser, split on whitespace, "▁" before each word; the unknown
    token at the class's fixed id (T5 2, XLM-R 3). DeBERTa-v2
    (tokenization_deberta_v2.py, transformers 5.25 on): optional lower-casing,
    then SentencePiece's compiled normaliser (NFKC: "²" reads as "2", "ﬁ" as
    "fi", as the SentencePiece model the checkpoint was trained with reads them),
    right strip and runs of spaces to one; without a compiled normaliser,
    whitespace runs, tabs and newlines to one space, NFC and right strip (what
    transformers 5.0-5.24 did in every case); optional punctuation splitting;
    its unknown token is found by name.
    """
    if family == "t5":
        return _metaspace_unigram(charsmap, vocab, 2, prepend_scheme="always")
    if family == "xlm-roberta":
        return _metaspace_unigram(charsmap, vocab, 3, "always" if config.get("add_prefix_space", True) else "never")
    unk = roles["unk"].content if "unk" in roles else "[UNK]"
    unk_id = vocab.index((unk, 0.0)) if (unk, 0.0) in vocab else 1  # DebertaV2Tokenizer's lookup and default
    backend = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    steps: list[normalizers.Normalizer] = [normalizers.Lowercase()] if config.get("do_lower_case", False) else []
    if charsmap:
        steps += [normalizers.Precompiled(charsmap), normalizers.Strip(left=False, right=True),
                  normalizers.Replace(Regex(r" {2,}"), " ")]  # fmt: skip
    else:
        steps += [normalizers.Replace(Regex(r"\s{2,}|[\n\r\t]"), " "), normalizers.NFC(),
                  normalizers.Strip(left=False, right=True)]  # fmt: skip
    backend.normalizer = normalizers.Sequence(steps)
    prepend_scheme = "always" if config.get("add_prefix_space", True) else "first"
    splits: list[pre_tokenizers.PreTokenizer] = []
    if config.get("split_by_punct", False):
        splits.append(pre_tokenizers.Punctuation(behavior="isolated"))
    splits.append(pre_tokenizers.Metaspace(replacement=_SPIECE_UNDERLINE, prepend_scheme=prepend_scheme))
    backend.pre_tokenizer = pre_tokenizers.Sequence(splits)
    backend.decoder = decoders.Metaspace(replacement=_SPIECE_UNDERLINE, prepend_scheme=prepend_scheme)
    return backend


def _metaspace_unigram(
    charsmap: bytes, vocab: list[tuple[str, float]], unk_id: int, prepend_scheme: str
) -> tokenizers.Tokenizer:
    """The conversion transformers' T5 and XLM-R tokenizers use: split on whitespace, then "▁" before each word."""
    backend = tokenizers.Tokenizer(models.Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    if charsmap:
        backend.normalizer = normalizers.Precompiled(charsmap)
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement=_SPIECE_UNDERLINE, prepend_scheme=prepend_scheme, split=True),
        ]
    )
    backend.decoder = decoders.Metaspace(replacement=_SPIECE_UNDERLINE, prepend_scheme=prepend_scheme, split=True)
    return backend


def _marian(
    folder: Path, spm_file: str, vocab_file: str, roles: dict[str, tokenizers.AddedToken], codes: Sequence[str]
) -> tokenizers.Tokenizer:
    """One side of a Marian pair: the side's SentencePiece model segments, the shared vocab.json numbers.

    transformers' MarianTokenizer runs ``SentencePieceProcessor.encode`` on
    the text between special tokens and looks each piece up in vocab.json.
    Here the unigram model is laid out in vocab.json's order, scored by this
    side's model, and normalised as SentencePiece itself does (transformers'
    ``SpmConverter.build_tokenizer_from_spm_proto``). One more step copies how
    unknown text fares: SentencePiece emits a run of characters it does not
    know as one piece spelling that run, which transformers finds in
    vocab.json when the other side's model has it (often a single letter)
    and maps to ``<unk>`` otherwise. So the normaliser brackets each such run
    with two markers, and each vocab.json entry this side cannot produce is
    entered bracketed the same way: it matches exactly a whole run, and a run
    matching none becomes one ``<unk>``.
    """
    model = _read_sentencepiece(folder / spm_file)
    if not (folder / vocab_file).is_file():
        raise NlpkitError(f"{folder}: missing {vocab_file}, the ids of the pieces of {spm_file}")
    vocab = _read_json(folder / vocab_file)
    ids = sorted(vocab.values()) if all(isinstance(i, int) for i in vocab.values()) else None
    if ids != list(range(len(vocab))):
        raise NlpkitError(f"{folder / vocab_file}: expected a token -> id object with ids 0 .. {len(vocab) - 1}")
    unk = roles["unk"].content if "unk" in roles else "<unk>"
    if unk not in vocab:
        raise NlpkitError(f"{folder / vocab_file}: the unknown token '{unk}' is not in the vocabulary")
    scores = {piece: score for piece, score, kind in model.pieces if kind in (_NORMAL, _USER_DEFINED)}
    floor = min(scores.values(), default=0.0)  # the unknown token's score derives from the lowest: keep it
    kept = {token.content for token in roles.values()} | set(codes)  # matched as added tokens, before the model
    kept |= {piece for piece, _, kind in model.pieces if kind == _BYTE}  # byte fallback finds "<0x41>" by name
    entries = []
    for token in sorted(vocab, key=vocab.__getitem__):
        if token in scores:
            entries.append((token, scores[token]))
        else:
            entries.append((token if token in kept else _RUN_START + token + _RUN_END, floor))
    lost = [piece for piece in scores if piece not in vocab]
    if lost:
        logger.warning(
            "%s: %d pieces of %s are not in %s and cannot be produced (transformers maps them to %s)",
            folder, len(lost), spm_file, vocab_file, unk,
        )  # fmt: skip
    backend = tokenizers.Tokenizer(models.Unigram(entries, unk_id=vocab[unk], byte_fallback=model.byte_fallback))
    steps: list[normalizers.Normalizer] = [normalizers.Precompiled(model.charsmap)] if model.charsmap else []
    if model.remove_extra_whitespaces:  # only spaces: SentencePiece leaves newlines and tabs to the charsmap
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    if model.escape_whitespaces:
        steps.append(normalizers.Replace(" ", _SPIECE_UNDERLINE))
    if model.add_dummy_prefix:
        # SentencePiece adds its dummy "▁" even before a text that starts with one; Metaspace would not.
        steps.append(normalizers.Replace(Regex(rf"\A{_SPIECE_UNDERLINE}"), _SPIECE_UNDERLINE * 2))
        # "always": every chunk between special tokens gets its own "▁", as each is encoded on its own.
        backend.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=_SPIECE_UNDERLINE, prepend_scheme="always", split=False
        )
    if not model.byte_fallback:  # with byte fallback SentencePiece spells unknown text in bytes instead
        # A character SentencePiece does not know is one without a piece of its own (it then inserts <unk>).
        known = {piece for piece in scores if len(piece) == 1} | {_SPIECE_UNDERLINE, _RUN_START, _RUN_END}
        unknown = f"[^{_char_class(known)}]"
        steps.append(normalizers.Replace(Regex(f"(?<!{unknown})(?={unknown})"), _RUN_START))
        steps.append(normalizers.Replace(Regex(f"(?<={unknown})(?!{unknown})"), _RUN_END))
    backend.normalizer = normalizers.Sequence(steps)
    backend.decoder = decoders.Sequence(
        [
            decoders.Replace(_RUN_START, ""),
            decoders.Replace(_RUN_END, ""),
            decoders.Replace(_SPIECE_UNDERLINE, " "),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1 if model.add_dummy_prefix else 0),
        ]
    )
    return backend


def _char_class(chars: set[str]) -> str:
    """The inside of a regex character class holding ``chars``, as ranges of code points (\\x{...} needs no escapes)."""
    ranges: list[list[int]] = []
    for code in sorted(map(ord, chars)):
        if ranges and code == ranges[-1][1] + 1:
            ranges[-1][1] = code
        else:
            ranges.append([code, code])
    return "".join(f"\\x{{{a:x}}}" if a == b else f"\\x{{{a:x}}}-\\x{{{b:x}}}" for a, b in ranges)


def _language_codes(path: Path) -> list[str]:
    """Multilingual Marian models' target-language tokens (``>>fr<<``), which transformers never segments."""
    return [token for token in _read_json(path) if token.startswith(">>") and token.endswith("<<")]


# -- reading SentencePiece models -----------------------------------------------------------------------------------

# SentencePiece piece types (sentencepiece_model.proto).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 1, 2, 3, 4, 6


@dataclass(frozen=True)
class _SentencePieceModel:
    """What the conversion needs from a SentencePiece model file."""

    pieces: list[tuple[str, float, int]]  # (piece, score, type), in id order
    unk_id: int
    byte_fallback: bool
    charsmap: bytes  # the normaliser (NFKC and friends) compiled into a trie
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    escape_whitespaces: bool


def _read_sentencepiece(path: Path) -> _SentencePieceModel:
    """Load a SentencePiece model with the ``sentencepiece`` package and read the fields the conversion needs.

    The package validates the file; its API does not expose the normaliser or
    the model type, so those few fields are read from the serialised model
    (sentencepiece_model.proto), which spares a dependency on ``protobuf``.
    """
    try:
        import sentencepiece
    except ImportError:
        install = 'pip install "nlpkit[sentencepiece]"'
        raise NlpkitError(f"{path}: reading a SentencePiece model needs the sentencepiece package: {install}") from None
    try:
        processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        proto = processor.serialized_model_proto()
        pieces: list[tuple[str, float, int]] = []
        trainer_spec = normalizer_spec = b""
        for field, value in _proto_fields(proto):
            if field == 1:  # ModelProto.pieces: piece = 1, score = 2, type = 3 (NORMAL when absent)
                piece = dict(_proto_fields(_as_bytes(value)))
                score = struct.unpack("<f", _as_bytes(piece.get(2, b"\0\0\0\0")))[0]
                pieces.append((_as_bytes(piece.get(1, b"")).decode("utf-8"), score, int(piece.get(3, _NORMAL))))
            elif field == 2:
                trainer_spec = _as_bytes(value)
            elif field == 3:
                normalizer_spec = _as_bytes(value)
        trainer, normalizer = dict(_proto_fields(trainer_spec)), dict(_proto_fields(normalizer_spec))
    except (OSError, RuntimeError, TypeError, ValueError, IndexError, struct.error) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise NlpkitError(f"{path}: not a SentencePiece model: {reason}") from None
    if len(pieces) != processor.get_piece_size():
        raise NlpkitError(f"{path}: read {len(pieces)} pieces, SentencePiece reports {processor.get_piece_size()}")
    model_type = trainer.get(3, 1)  # TrainerSpec.model_type: 1 unigram, 2 BPE, 3 word, 4 char
    if model_type != 1:
        raise NlpkitError(f"{path}: only SentencePiece unigram models are supported, not model_type {model_type!r}")
    return _SentencePieceModel(
        pieces=pieces,
        unk_id=next((i for i, (_, _, kind) in enumerate(pieces) if kind == _UNKNOWN), 0),
        byte_fallback=bool(trainer.get(35, 0)),
        charsmap=_as_bytes(normalizer.get(2, b"")),
        add_dummy_prefix=bool(normalizer.get(3, 1)),
        remove_extra_whitespaces=bool(normalizer.get(4, 1)),
        escape_whitespaces=bool(normalizer.get(5, 1)),
    )


def _proto_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of a serialised protobuf message: varints as ints, the rest as bytes."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        wire_type = key & 7
        value: int | bytes
        if wire_type == 0:
            value, pos = _varint(data, pos)
        elif wire_type == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire_type in (1, 5):  # fixed 64 / 32 bits
            width = 8 if wire_type == 1 else 4
            value, pos = data[pos : pos + width], pos + width
        else:
            raise ValueError(f"unexpected protobuf wire type {wire_type}")
        yield key >> 3, value


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return result, pos
        shift += 7


def _as_bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ValueError("malformed SentencePiece model")
    return value


