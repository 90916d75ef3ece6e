"""Chat templates: render a conversation to text, and find the assistant's part of it.

A chat template is the Jinja program a model folder ships (``chat_template``
in tokenizer_config.json, or ``chat_template.jinja``) that turns a list of
``{"role", "content"}`` messages into the text the model was trained on.
This module renders them as ``transformers`` does
(``transformers/utils/chat_template_utils.py``): a sandboxed Jinja
environment with ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols``
extension, a ``tojson`` filter that does not escape HTML, the globals
``raise_exception`` (a template's own error, raised here as
:class:`~nlpkit.errors.NlpkitError`) and ``strftime_now``, ``dict`` and
``namespace`` kept from reaching Python internals, and the
``{% generation %}`` tag that marks the assistant's text. The variables a
template sees are ``messages``, ``add_generation_prompt``, ``tools``,
``documents``, the tokenizer's special tokens (``bos_token``,
``eos_token`` ...) and any extra keyword argument (``enable_thinking`` for
Qwen3, ``date_string`` for Llama 3 ...).

Which tokens are the assistant's (:func:`assistant_spans`,
:func:`assistant_mask`) is what supervised fine-tuning trains on: each
assistant turn's content and the token that ends it, nothing the user or the
template wrote. A template with ``{% generation %}`` markers says so itself;
for the others each assistant turn is located by rendering the conversation
up to it (see :func:`assistant_spans`).

The default template
--------------------
A run trained from scratch has no template of its own; it gets
:data:`DEFAULT_CHAT_TEMPLATE`, the ChatML layout::

    <|im_start|>system
    You are terse.<|im_end|>
    <|im_start|>user
    Hi<|im_end|>
    <|im_start|>assistant
    Hello!<|im_end|>

with ``<|im_start|>assistant\\n`` as the generation prompt, and
``{% generation %}`` markers around each assistant content and its
``<|im_end|>``. The tokenizer of such a run must hold
:data:`DEFAULT_CHAT_TOKENS` as special tokens (added before training, so
that each is one token the model learns, never split into pieces of text).
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import lru_cache
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from nlpkit.errors import NlpkitError

__all__ = ["DEFAULT_CHAT_TOKENS", "DEFAULT_CHAT_TEMPLATE", "ChatEncoding", "render", "render_with_generation_spans",
           "has_generation_markers", "assistant_spans", "assistant_mask"]

# The turn delimiters of the default template; a from-scratch tokenizer adds them as special tokens.
DEFAULT_CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}"
    "{{ message['content'] + '<|im_end|>' }}"
    "{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# transformers' test for "this template marks the assistant's text".
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
# Older and newer names of a message's reasoning; templates read `reasoning_content` (gpt-oss: `thinking`).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")

Span = tuple[int, int]
# Encodes a text: (token ids, each token's (start, end) character offsets into the text).
Encoder = Callable[[str], tuple[Sequence[int], Sequence[Span]]]


class ChatEncoding(NamedTuple):
    """A conversation's token ids, and which of them the assistant wrote (1) or not (0)."""

    ids: list[int]
    assistant_mask: list[int]


# -- rendering ---------------------------------------------------------------------------------------------------


class _GenerationTracker(jinja2.ext.Extension):
    """The ``{% generation %}...{% endgeneration %}`` tag: renders its body, and records where it landed.

    Recording is on only inside :meth:`tracking` (one render at a time per
    context, as in transformers); otherwise the tag is transparent.
    """

    tags = {"generation"}

    def __init__(self, environment: jinja2.Environment) -> None:
        super().__init__(environment)
        self._tracking: ContextVar[tuple[list[str], list[Span]] | None] = ContextVar("generation", default=None)

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_generation"), [], [], body).set_lineno(lineno)

    def _generation(self, caller: Callable[[], str]) -> str:
        text = caller()
        tracking = self._tracking.get()
        if tracking is not None:
            rendered, spans = tracking
            # The chunks rendered so far are exactly the text before this block.
            start = sum(map(len, rendered))
            spans.append((start, start + len(text)))
        return text

    @contextmanager
    def tracking(self, rendered: list[str], spans: list[Span]) -> Iterator[None]:
        token = self._tracking.set((rendered, spans))
        try:
            yield
        finally:
            self._tracking.reset(token)


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML, which would change the text a model sees.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """``dict(...)`` and ``dict.fromkeys(...)`` for templates, without handing them the class itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's ``namespace()``, refusing underscore names, through which a template could reach Python internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # Jinja's signature, so that `namespace(self=...)` works
        self, rest = args[0], args[1:]
        attributes = dict(*rest, **kwargs)
        for name in attributes:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attributes)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}"
            )


@lru_cache(maxsize=64)
def _compile(template: str) -> jinja2.Template:
    """The compiled template; cached, since one template renders every example of a dataset."""
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTracker, jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    environment.globals["dict"] = _TemplateDict()
    environment.globals["namespace"] = _TemplateNamespace
    try:
        return environment.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as error:
        raise NlpkitError(f"chat template: line {error.lineno}: {error.message}") from None


def _tracker(compiled: jinja2.Template) -> _GenerationTracker:
    extension = compiled.environment.extensions[_GenerationTracker.identifier]
    assert isinstance(extension, _GenerationTracker)  # registered in _compile
    return extension


def _prepared_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The messages as transformers hands them to a template: plain dicts, keys set to None left out,
    reasoning given under every name templates read."""
    prepared = []
    for number, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise NlpkitError(f"chat message {number + 1}: expected a mapping with 'role' and 'content', "
                              f"got {type(message).__name__}")
        plain = {key: value for key, value in message.items() if value is not None}
        reasoning = next((plain[key] for key in _REASONING_FIELDS if key in plain), None)
        if reasoning is not None:
            plain = {"thinking": reasoning, **plain, "reasoning_content": reasoning}
        prepared.append(plain)
    return prepared


def _context(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool,
             special_tokens: Mapping[str, str] | None, variables: Mapping[str, Any]) -> dict[str, Any]:
    # Extra variables win over the special tokens, as in transformers.
    context: dict[str, Any] = {**(special_tokens or {}), **variables}
    context.setdefault("tools", None)
    context.setdefault("documents", None)
    context["messages"] = _prepared_messages(messages)
    context["add_generation_prompt"] = add_generation_prompt
    return context


def render(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, str] | None = None,
    **variables: Any,
) -> str:
    """Render a conversation with a chat template.

    Args:
        template: the Jinja source.
        messages: ``{"role", "content"}`` mappings (and whatever else the
            template reads: ``reasoning_content``, ``tool_calls`` ...).
        add_generation_prompt: end with the opening of an assistant turn,
            so that a model continues as the assistant.
        special_tokens: the tokenizer's special tokens by template name
            (``{"bos_token": "<s>", "eos_token": "</s>"}``).
        **variables: more template variables (``tools``, ``documents``,
            ``enable_thinking`` ...); they win over ``special_tokens``.

    Returns:
        The rendered text.

    Raises:
        NlpkitError: the template does not compile, or it rejects the
            conversation (its ``raise_exception``, e.g. "System role not
            supported"), or fails while rendering it.
    """
    return render_with_generation_spans(
        template, messages, add_generation_prompt=add_generation_prompt, special_tokens=special_tokens, **variables
    )[0]


def render_with_generation_spans(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    special_tokens: Mapping[str, str] | None = None,
    **variables: Any,
) -> tuple[str, list[Span]]:
    """:func:`render`, and the ``(start, end)`` character spans of its ``{% generation %}`` blocks, in order.

    The spans are empty for a template without the tag.
    """
    compiled = _compile(template)
    context = _context(messages, add_generation_prompt, special_tokens, variables)
    rendered: list[str] = []
    spans: list[Span] = []
    try:
        with _tracker(compiled).tracking(rendered, spans):
            for chunk in compiled.generate(**context):
                rendered.append(chunk)
    except jinja2.exceptions.TemplateError as error:  # raise_exception, and the sandbox's own errors
        raise NlpkitError(f"chat template: {error.message or type(error).__name__}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as error:
        raise NlpkitError(f"chat template: rendering failed: {type(error).__name__}: {error}") from None
    return "".join(rendered), spans


def has_generation_markers(template: str) -> bool:
    """Whether the template marks the assistant's text with ``{% generation %}``."""
    return _GENERATION_TAG.search(template) is not None


# -- the assistant's part ----------------------------------------------------------------------------------------


def assistant_spans(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    special_tokens: Mapping[str, str] | None = None,
    **variables: Any,
) -> tuple[str, list[Span]]:
    """The rendered conversation and the character spans of its assistant turns (content and end token).

    With ``{% generation %}`` markers the spans are the marked blocks. Without
    them each assistant turn ``i`` is located from two renderings of the
    conversation cut short: ``messages[:i]`` with the generation prompt (the
    text before the turn) and ``messages[:i + 1]`` (the same text with the
    turn written out). Their difference is the turn as the template writes
    it when the turn comes last; the span is where that difference lies in
    the rendering of the whole conversation:

    - it starts where the text before the turn ends there. When that text is
      not a prefix of the whole rendering (Mistral writes the system message
      into the last user turn only), the end of the longest tail of it found
      after the previous assistant turn is used;
    - it covers the longest part of the difference that the whole rendering
      repeats from there: its beginning (Phi-3 ends a conversation with an
      extra ``eos_token`` that a longer one does not have) or its end (Qwen3
      drops the ``<think>`` block of an assistant turn once a later user turn
      follows, so only the answer and ``<|im_end|>`` are there);
    - whitespace the template writes after the end token (``\\n`` between
      ChatML turns) is left out: the model never generates it.

    Args:
        template: the Jinja source.
        messages: the conversation, without a generation prompt.
        special_tokens: the tokenizer's special tokens by template name.
        **variables: more template variables.

    Returns:
        ``(text, spans)``: the rendering of the whole conversation and one
        ``(start, end)`` span per assistant turn (per marked block with markers).

    Raises:
        NlpkitError: the template fails on the conversation, or an
            assistant turn cannot be found in the whole rendering at all
            (the template rewrites it beyond recognition); rather than train
            on a wrong mask, the error says to mark the template's assistant
            text with ``{% generation %}``.
    """
    text, spans = render_with_generation_spans(template, messages, special_tokens=special_tokens, **variables)
    if has_generation_markers(template):
        return text, spans
    spans = []
    cursor = 0  # where the previous assistant turn ended in `text`
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = render(template, messages[:index], add_generation_prompt=True, special_tokens=special_tokens,
                        **variables) if index else ""
        through = render(template, messages[: index + 1], special_tokens=special_tokens, **variables)
        start = _end_of(before, text, cursor, last=False)
        turn_start = _end_of(before, through, 0, last=True)
        if start is None or turn_start is None:
            raise _not_found(index)
        turn = through[turn_start:]
        length = max(_matched_beginning(text, start, turn), _longest_suffix_at(turn, text, start))
        if turn and not length:
            raise _not_found(index)
        end = start + len(text[start : start + length].rstrip())
        spans.append((start, end))
        cursor = end
    return text, spans


def assistant_mask(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    encode: Encoder,
    *,
    special_tokens: Mapping[str, str] | None = None,
    **variables: Any,
) -> ChatEncoding:
    """The token ids of a rendered conversation, with 1 for each token of an assistant turn (see :func:`assistant_spans`).

    A token is the assistant's when its characters overlap an assistant
    span, as transformers' ``return_assistant_tokens_mask`` decides.

    Args:
        template: the Jinja source.
        messages: the conversation.
        encode: the tokenizer's encoding of a text without added special
            tokens, as ``(ids, offsets)``.
        special_tokens: the tokenizer's special tokens by template name.
        **variables: more template variables.
    """
    text, spans = assistant_spans(template, messages, special_tokens=special_tokens, **variables)
    ids, offsets = encode(text)
    return ChatEncoding(list(ids), _overlapping(offsets, spans))


def _overlapping(offsets: Sequence[Span], spans: Sequence[Span]) -> list[int]:
    """1 for each token whose ``(start, end)`` overlaps one of the (sorted) spans, else 0."""
    mask = [0] * len(offsets)
    span = 0
    for token, (start, end) in enumerate(offsets):
        while span < len(spans) and start >= spans[span][1]:
            span += 1
        if span == len(spans):
            break
        if end > spans[span][0]:
            mask[token] = 1
    return mask


def _end_of(context: str, text: str, cursor: int, *, last: bool) -> int | None:
    """Where ``context`` (a rendering of the conversation up to some point) ends in ``text``.

    When ``context`` is a prefix of ``text`` (from ``cursor`` on), its length;
    otherwise the end of the longest tail of ``context`` found in ``text`` at
    or after ``cursor`` (the last occurrence with ``last``, else the first).
    None when not even its last character is there.
    """
    if text.startswith(context) and len(context) >= cursor:
        return len(context)
    find = text.rfind if last else text.find
    # A tail found at or after `cursor` contains every shorter tail: the found lengths are a range 0..best.
    low, high = 0, len(context)
    while low < high:
        middle = (low + high + 1) // 2
        if find(context[len(context) - middle :], cursor) >= 0:
            low = middle
        else:
            high = middle - 1
    if low == 0:
        return None
    return find(context[len(context) - low :], cursor) + low


def _matched_beginning(text: str, start: int, piece: str) -> int:
    """How much of the beginning of ``piece`` ``text`` repeats at ``start``, cut back to whitespace if partial.

    A partial match stops inside whatever follows the turn (Phi-3's last
    turn ends ``<|end|>\n</s>``, a longer conversation ``<|end|>\n<|user|>``:
    they share the ``<``), so it is cut back to the last whitespace, where
    the template's own text between turns begins.
    """
    length = 0
    for a, b in zip(piece, text[start : start + len(piece)]):
        if a != b:
            break
        length += 1
    if length < len(piece):
        matched = piece[:length]
        last_space = max(matched.rfind(c) for c in " \n\t")
        if last_space >= 0:
            length = last_space
    return length


def _longest_suffix_at(piece: str, text: str, start: int) -> int:
    """The length of the longest tail of ``piece`` that ``text`` holds at ``start``."""
    for length in range(len(piece), 0, -1):
        if text.startswith(piece[len(piece) - length :], start):
            return length
    return 0


def _not_found(index: int) -> NlpkitError:
    return NlpkitError(
        f"chat template: assistant message {index + 1} cannot be found in the rendered conversation (the template "
        "rewrites it); mark the assistant text in the template with {% generation %}...{% endgeneration %}"
    )
