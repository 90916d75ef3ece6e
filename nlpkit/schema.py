"""The one typed-dataclass validator: recipe sections, task options, decoding options, backbone configs.

A dataclass says what a section holds: each field's type annotation (``int``,
``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``, lists, mappings,
nested dataclasses) and its default; ranges and relations between fields are
checked by the dataclass's own ``__post_init__``, which raises ``ValueError``
with a message that starts with the field's name. :func:`build` checks a
mapping (read from YAML or JSON, or given in Python) against it and raises
:class:`nlpkit.NlpkitError` in one line: ``FILE: key.path: expected ...``,
with a close-match suggestion for a misspelled key or value.

Values are converted only where that loses nothing: an ``int`` where a
``float`` goes, a number where a string goes (``name: 2024``), a string a
number reads from (PyYAML reads ``5e-4`` as a string).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, Union

from nlpkit.errors import NlpkitError
from nlpkit.registry import suggest

__all__ = ["Context", "build", "check_fields", "describe", "type_name", "validation_error"]


class Context:
    """Where values come from, for messages: ``SOURCE: key.path: message``.

    Args:
        source: the file (or other origin) the values were read from.
        overrides: key paths set on the command line, mapped to the override
            text; an error at or under such a key names the override instead.
        template: how a message is laid out; ``{source}``, ``{key}`` (the
            dotted path) and ``{message}``. Decoding options read
            ``decoding option top_k: expected ...``.
    """

    def __init__(self, source: str, overrides: dict[tuple[str, ...], str] | None = None,
                 template: str = "{source}: {key}: {message}") -> None:
        self.source = source
        self.overrides = overrides or {}
        self.template = template

    def error(self, path: tuple[str, ...], message: str) -> NlpkitError:
        source = self.source
        for override_path, text in self.overrides.items():
            if path[: len(override_path)] == override_path or override_path[: len(path)] == path:
                source = f"override '{text}'"
                break
        if not path:
            return NlpkitError(f"{source}: {message}" if source else message)
        return NlpkitError(self.template.format(source=source, key=".".join(path), message=message))


def describe(value: Any) -> str:
    """A value as messages show it: its repr (cut at 60 characters) and its type."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def type_name(hint: Any) -> str:
    """What a type annotation expects, in words: ``an integer``, ``one of 'a', 'b'``."""
    origin = typing.get_origin(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(hint) if a is not type(None))
    return str(hint)


def _coerce(value: Any, hint: Any, path: tuple[str, ...], ctx: Context) -> Any:
    """Check ``value`` against the type ``hint`` and return it, converted where lossless."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            raise ctx.error(path, f"expected {type_name(hint)}, got null")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path, ctx)
            except NlpkitError as error:
                errors.append(error)
        if len(errors) == 1:
            raise errors[0]
        raise ctx.error(path, f"expected {type_name(hint)}, got {describe(value)}")
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # a dataclass hint, not an instance
        return value if isinstance(value, hint) else build(hint, value, path, ctx)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads 5e-4 (no dot) as a string: accept any number a user would write.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin is Literal:
        if value in typing.get_args(hint):
            return value
        choices = [str(a) for a in typing.get_args(hint)]
        raise ctx.error(path, f"expected {type_name(hint)}, got {describe(value)}{suggest(str(value), choices)}")
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            (item_hint,) = typing.get_args(hint)[:1] or (Any,)
            return [_coerce(v, item_hint, path + (str(i),), ctx) for i, v in enumerate(value)]
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            args = typing.get_args(hint)
            item_hint = args[1] if len(args) == 2 else Any
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise ctx.error(path + (str(k),), "keys must be strings")
                out[k] = _coerce(v, item_hint, path + (k,), ctx)
            return out
    else:
        raise TypeError(f"unsupported recipe field type {hint!r} at {'.'.join(path)}")
    raise ctx.error(path, f"expected {type_name(hint)}, got {describe(value)}")


def build(cls: type, raw: Any, path: tuple[str, ...] = (), ctx: Context | str = "<recipe>") -> Any:
    """Validate a mapping against dataclass ``cls`` and build it.

    Unknown keys are errors with a close-match suggestion; missing required
    fields and wrong types name the key path. ``ValueError`` raised by the
    dataclass's own ``__post_init__`` becomes a user error at ``path``, or at
    the field its message starts with (``"dropout must be in [0, 1), ..."``).

    Args:
        cls: the dataclass.
        raw: the mapping read from YAML (None means all defaults).
        path: the key path of the mapping in the recipe, for messages.
        ctx: error context, or a source name such as the recipe's file name.
    """
    if isinstance(ctx, str):
        ctx = Context(ctx)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ctx.error(path, f"expected a mapping, got {describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
    for key in raw:
        if key not in fields:
            known = sorted(fields)
            raise ctx.error(
                path + (str(key),),
                f"unknown key{suggest(str(key), known)} (known: {', '.join(known)})",
            )
    kwargs = {}
    for name, f in fields.items():
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], path + (name,), ctx)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ctx.error(path + (name,), f"missing required key (expected {type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except ValueError as error:
        raise validation_error(ctx, path, str(error), fields) from None


def check_fields(instance: Any) -> None:
    """Check the field types of a dataclass built in Python (not from a mapping), converting where lossless.

    For a dataclass's ``__post_init__``, so that code which builds it directly
    (``BackboneConfig(num_heads="4")``) gets the same message :func:`build` gives.

    Raises:
        NlpkitError: ``name: expected ..., got ...`` (a ``ValueError``).
    """
    ctx = Context("", template="{key}: {message}")
    hints = typing.get_type_hints(type(instance))
    for f in dataclasses.fields(instance):
        setattr(instance, f.name, _coerce(getattr(instance, f.name), hints[f.name], (f.name,), ctx))


def validation_error(ctx: Context, path: tuple[str, ...], message: str, fields: Iterable[str]) -> NlpkitError:
    """A dataclass's own check failed: a message that starts with a field name
    ("dropout must be in [0, 1)", "block_size: expected ...") is put at that key."""
    first, _, rest = message.partition(" ")
    name = first.rstrip(":")
    if name in fields and (first.endswith(":") or rest.startswith("must ")):
        return ctx.error(path + (name,), rest)
    return ctx.error(path, message)  # about several fields, e.g. "hidden_size (128) must be divisible by num_heads"
