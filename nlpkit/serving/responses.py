"""A worker's answers in the shapes OpenAI's API answers in: completions, chat completions, their stream chunks.

A completion's ``outputs`` are ``nlpkit.generation.Generated`` objects as
dicts (``prompt_tokens`` and ``continuations``: ``text``, ``tokens``,
``finish_reason``). Choices are numbered as OpenAI numbers them: prompt ``i``'s
``j``-th continuation is choice ``i * n + j``, the same index its streamed
chunks carry. Usage counts the prompt's tokens as the model saw them (a chat
prompt rendered through its template) and every token generated, an
end-of-sequence token that ended a continuation included.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

__all__ = ["Completion"]


class Completion:
    """One completion request's answer, whole or as stream chunks (``verb``: ``complete`` or ``chat``)."""

    def __init__(self, verb: str, model_id: str) -> None:
        self.chat = verb == "chat"
        self.model_id = model_id
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.started: set[int] = set()

    def whole(self, outputs: list[dict[str, Any]]) -> dict[str, Any]:
        """The non-streamed answer: every choice and the usage."""
        choices: list[dict[str, Any]] = []
        for generated in outputs:
            for continuation in generated["continuations"]:
                choice: dict[str, Any] = {"index": len(choices)}
                if self.chat:
                    choice["message"] = {"role": "assistant", "content": continuation["text"]}
                else:
                    choice["text"] = continuation["text"]
                choice |= {"logprobs": None, "finish_reason": continuation["finish_reason"]}
                choices.append(choice)
        return self._envelope(self.chat and "chat.completion" or "text_completion", choices) | {
            "usage": usage(outputs)}

    def delta(self, row: int, text: str) -> str:
        """A chunk of new text for choice ``row`` (a chat choice's first chunk also says the role)."""
        return self._chunk([self._choice(row, text, None)])

    def ends(self, outputs: list[dict[str, Any]], include_usage: bool) -> list[str]:
        """The last chunks: each choice's finish reason, the usage when asked for, and the end marker."""
        finals = [self._choice(row, "", c["finish_reason"]) for row, c in enumerate(
            c for generated in outputs for c in generated["continuations"])]
        chunks = [self._chunk([choice]) for choice in finals]
        if include_usage:
            chunks.append(self._chunk([], usage=usage(outputs)))
        return chunks + ["data: [DONE]\n\n"]

    def _choice(self, row: int, text: str, finish_reason: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": row}
        if self.chat:
            delta: dict[str, Any] = {}
            if row not in self.started:
                delta["role"] = "assistant"
            if text or finish_reason is None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text
        self.started.add(row)
        return choice | {"logprobs": None, "finish_reason": finish_reason}

    def _chunk(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body = self._envelope(self.chat and "chat.completion.chunk" or "text_completion", choices) | extra
        return f"data: {json.dumps(body)}\n\n"

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model_id, "choices": choices}


def usage(outputs: list[dict[str, Any]]) -> dict[str, int]:
    prompt = sum(generated["prompt_tokens"] for generated in outputs)
    completion = sum(c["tokens"] for generated in outputs for c in generated["continuations"])
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
