"""Chat with a decoder: conversations rendered through its chat template, replies until its end-of-turn token.

``nlpkit.load(path).chat(messages)``, ``nlpkit chat PATH`` (an interactive
session) and ``nlpkit generate --chat`` all go through :func:`reply`: each
conversation is rendered with the tokenizer's chat template and its generation
prompt (``Tokenizer.apply_chat_template(..., add_generation_prompt=True)``),
continued with ``nlpkit.generation``, and the continuation stops at an
end-of-sequence token or at the template's own end-of-turn token
(``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>`` ...), found by rendering a
one-exchange conversation and taking the token that closes the assistant's turn.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from nlpkit.chat_data import check_messages
from nlpkit.errors import NlpkitError

__all__ = ["reply", "end_of_turn_ids", "interactive"]

Message = dict[str, str]

# The conversation whose rendering shows how the template closes an assistant turn.
_PROBE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """The special token that ends an assistant turn in the tokenizer's template (none when it ends with text)."""
    ids, assistant = tokenizer.encode_chat(_PROBE)
    turn = [token for token, counted in zip(ids, assistant) if counted]
    special = set(tokenizer.special_token_ids)
    return [turn[-1]] if turn and turn[-1] in special else []


def _conversations(messages: Any) -> tuple[list[list[Message]], bool]:
    """One conversation (a list of messages) or a list of them; checked, and whether it was one."""
    if isinstance(messages, Sequence) and messages and all(isinstance(m, Mapping) for m in messages):
        return [check_messages(list(messages), "messages")], True
    if isinstance(messages, Sequence) and not isinstance(messages, str) and messages and all(
            isinstance(c, Sequence) and not isinstance(c, str) for c in messages):
        return [check_messages(list(c), f"conversation {i + 1}") for i, c in enumerate(messages)], False
    raise NlpkitError("chat: expected a conversation (a list of {role, content} messages) or a list of conversations, "
                      f"got {type(messages).__name__ if messages != [] else 'an empty list'}")


def reply(model: Any, tokenizer: Any, messages: Any, *, defaults: Mapping[str, Any] | None = None,
          stream: Callable[[str], None] | None = None, **options: Any) -> Any:
    """The assistant's next turn in one conversation, or in each of a list of conversations.

    Args:
        model: an nlpkit decoder with its LM head.
        tokenizer: the model's tokenizer, with a chat template.
        messages: a list of ``{"role", "content"}`` (roles system, user,
            assistant), or a list of such lists (one batch).
        defaults: the model's decoding defaults (its end-of-sequence token ...).
        stream: called with each new piece of the first conversation's reply.
        **options: decoding options, as in ``nlpkit.generation.generate``, and
            its ``on_text`` and ``details``.

    Returns:
        ``{"role": "assistant", "content": text}`` for one conversation, a list
        of them for a list (a list per conversation with ``num_return_sequences > 1``);
        with ``details=True``, ``nlpkit.generation.Generated`` objects instead.

    Raises:
        NlpkitError: a malformed conversation, a tokenizer without a chat
            template, or what ``generate`` refuses.
    """
    from nlpkit.generation import generate

    conversations, single = _conversations(messages)
    settings = dict(defaults or {})
    if "eos_token_id" not in options:
        given = settings.get("eos_token_id")
        ends = [] if given is None else [given] if isinstance(given, int) else list(given)
        settings["eos_token_id"] = list(dict.fromkeys(ends + end_of_turn_ids(tokenizer)))

    def render(batch: list[list[Message]]) -> list[list[int]]:
        return [tokenizer.apply_chat_template(c, add_generation_prompt=True) for c in batch]

    texts = generate(model, tokenizer, conversations, encode=render, defaults=settings, stream=stream, **options)
    if options.get("details"):  # Generated objects: the replies' texts with their token counts
        return texts[0] if single else texts

    def turn(text: str) -> Message:
        return {"role": "assistant", "content": text}

    answers = [[turn(t) for t in text] if isinstance(text, list) else turn(text) for text in texts]
    return answers[0] if single else answers


def interactive(respond: Callable[..., Message], system: str | None = None, *, read: Callable[[str], str] = input,
                out: TextIO | None = None) -> None:
    """A terminal session: each line typed is the user's turn, the reply streams back, the history is kept.

    An empty line is skipped; ``/exit``, end of input (Ctrl-D) or Ctrl-C ends the session.

    Args:
        respond: ``respond(history, stream=callback)`` -> the assistant's message.
        system: a system message that opens the conversation.
        read: reads one line after showing a prompt.
        out: where replies are written (standard output).
    """
    out = out or sys.stdout
    history: list[Message] = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = read("> ")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            return
        if not line.strip():
            continue
        if line.strip() == "/exit":
            return
        history.append({"role": "user", "content": line})

        def show(piece: str) -> None:
            out.write(piece)
            out.flush()

        answer = respond(history, stream=show)
        out.write("\n")
        out.flush()
        history.append(answer)
