"""The ``chat`` data format: conversations as lists of messages, from JSON rows of several layouts.

Every row becomes one value of a ``messages`` column: a list of
``{"role": ..., "content": ...}`` with roles ``system``, ``user`` and
``assistant``. A row may hold the conversation itself, or one exchange in an
instruction layout:

=====================  ==========================================================  ===================
field                  columns read when ``data.columns`` does not name one          becomes
=====================  ==========================================================  ===================
``messages``           ``messages`` (a list of role/content objects)                 the conversation
``system``             ``system``                                                    a first system turn
``user``               ``instruction``, ``question``, ``prompt``, ``user``           the user's turn
``input``              ``input`` (Alpaca's optional context)                         appended to it
``assistant``          ``output``, ``answer``, ``response``, ``completion``,         the assistant's turn
                       ``assistant``
=====================  ==========================================================  ===================

So GSM8K's ``{"question", "answer"}`` rows and Alpaca's ``{"instruction",
"input", "output"}`` rows read as they are; other names are mapped with
``data.columns`` (``{user: query, assistant: reply}``). Alpaca's ``input``, when
not empty, follows the instruction after a blank line, as in Alpaca's own
prompt. A bad row is reported by file and row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from nlpkit.errors import NlpkitError

if TYPE_CHECKING:
    import datasets

__all__ = ["as_conversations", "CHAT_FIELDS", "ROLES", "check_messages"]

ROLES = ("system", "user", "assistant")

# Field -> the column names read for it, in order, when data.columns does not name one.
_DEFAULT_COLUMNS = {
    "messages": ("messages",),
    "system": ("system",),
    "user": ("instruction", "question", "prompt", "user"),
    "input": ("input",),
    "assistant": ("output", "answer", "response", "completion", "assistant"),
}
CHAT_FIELDS = tuple(_DEFAULT_COLUMNS)


def check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """A conversation's messages as ``{"role", "content"}`` dicts, or NlpkitError naming ``where`` and the message.

    Keys beyond ``role`` and ``content`` are dropped (one column type for every row).
    """
    if not isinstance(messages, list) or not messages:
        raise NlpkitError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects, "
                          f"got {type(messages).__name__ if messages != [] else 'an empty list'}")
    checked = []
    for number, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise NlpkitError(f"{where}: messages[{number}]: expected an object with role and content, "
                              f"got {type(message).__name__}")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise NlpkitError(f"{where}: messages[{number}].role: expected one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise NlpkitError(f"{where}: messages[{number}].content: expected a string, got "
                              f"{type(content).__name__ if content is not None else 'nothing'}")
        checked.append({"role": role, "content": content})
    return checked


def _column_of(field: str, columns: Mapping[str, str], present: list[str]) -> str | None:
    if field in columns:
        return columns[field]
    return next((name for name in _DEFAULT_COLUMNS[field] if name in present), None)


def _layout(columns: Mapping[str, str], present: list[str], path: str) -> dict[str, str]:
    """Field -> the file's column, for the fields this file holds; NlpkitError when it holds no conversation."""
    chosen = {f: c for f in CHAT_FIELDS if (c := _column_of(f, columns, present)) is not None}
    for field, column in chosen.items():
        if column not in present:
            raise NlpkitError(f"{path}: missing column '{column}' (data.columns.{field}); found: {', '.join(present)}")
    if "messages" in chosen:
        return {"messages": chosen["messages"]}
    if "user" not in chosen or "assistant" not in chosen:
        raise NlpkitError(
            f"{path}: no conversation in its columns ({', '.join(present)}): expected 'messages', or a user and an "
            f"assistant column ({'/'.join(_DEFAULT_COLUMNS['user'])} and {'/'.join(_DEFAULT_COLUMNS['assistant'])}); "
            f"name others with data.columns.user and data.columns.assistant"
        )
    return chosen


def _conversation(row: Mapping[str, Any], layout: Mapping[str, str], where: str) -> list[dict[str, str]]:
    if "messages" in layout:
        return check_messages(row[layout["messages"]], where)
    turns = {}
    for field, column in layout.items():
        value = row[column]
        if value is None and field in ("system", "input"):
            continue
        if not isinstance(value, str) or (field in ("user", "assistant") and not value.strip()):
            problem = "empty" if isinstance(value, str) or value is None else f"not text ({type(value).__name__})"
            raise NlpkitError(f"{where}: '{column}' is {problem}")
        turns[field] = value
    user = turns["user"] + (f"\n\n{turns['input']}" if turns.get("input", "").strip() else "")
    messages = [{"role": "system", "content": turns["system"]}] if turns.get("system", "").strip() else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": turns["assistant"]}]


def as_conversations(loaded: datasets.DatasetDict, files: dict[str, str],
                     columns: Mapping[str, str] | None = None) -> datasets.DatasetDict:
    """Rows read from JSON (``files``: split -> path) as one ``messages`` column, whatever their layout.

    Args:
        loaded: the splits as ``datasets`` read them.
        files: split -> path, for messages.
        columns: the recipe's ``data.columns``: chat field -> the file's column.

    Raises:
        NlpkitError: a file without a conversation layout, or a row whose
            conversation is malformed or has no assistant turn to learn from,
            named by file and row.
    """
    import datasets

    out = {}
    for split, dataset in loaded.items():
        path = files[split]
        layout = _layout(columns or {}, dataset.column_names, path)

        def to_messages(row: dict[str, Any], index: int, path: str = path, layout: dict[str, str] = layout) -> dict[str, Any]:
            where = f"{path}: row {index + 1}"
            messages = _conversation(row, layout, where)
            if not any(m["role"] == "assistant" for m in messages):
                raise NlpkitError(f"{where}: no assistant turn to learn from")
            return {"messages": messages}

        # A map, not a new in-memory table: datasets caches its result next to the JSON's Arrow file.
        out[split] = dataset.map(to_messages, with_indices=True, remove_columns=dataset.column_names,
                                 desc="chat: reading conversations")
    return datasets.DatasetDict(out)
