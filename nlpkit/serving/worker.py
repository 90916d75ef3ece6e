"""The inference worker: one model copy answering batches of requests of every verb, streaming where asked.

LitServe hands :class:`ModelAPI` the requests a free worker collected within
``batch_timeout``, up to ``max_batch_size``. Requests of one verb and equal
decoding options are answered with one call of the model's verb (one padded
batch); a batch that mixes verbs or options runs one call per group, in turn.
Grouping rather than per-row options: ``nlpkit.generation`` decodes a batch
with one set of options, and requests that share options (the usual case: one
client, one setting) still share a batch. A request that samples with a
``seed`` is a group of its own, so its answer does not depend on what it was
batched with.

The API is a streaming one (``stream=True``) whatever the verb, so that one
worker loop serves streamed completions and plain predictions alike: each
step yields one event per request of the batch, ``None`` when that request
has nothing new, ``{"delta": [[row, text], ...]}`` for the new text of a
streamed completion, and finally ``{"outputs": ..., "batch_size": n}`` or
``{"error": message, "batch_size": n}``. A request's final event comes as soon
as its group is done.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import litserve as ls

from nlpkit.errors import NlpkitError

__all__ = ["ModelAPI", "INTERNAL_PATH", "GENERATING_VERBS"]

# LitServe registers the LitAPI at this path; nlpkit removes that route and submits to its queue itself.
INTERNAL_PATH = "/_nlpkit/model"
# Verbs answered with nlpkit.generation's Generated objects (token counts, finish reasons), streamable.
GENERATING_VERBS = ("complete", "chat")

PREDICT_CHUNK = 8
Event = dict[str, Any] | None
OnText = Callable[[int, str], None]


class ModelAPI(ls.LitAPI):
    """The one LitAPI: every verb of one model copy per worker, batched across requests."""

    def __init__(self, path: str, *, max_batch_size: int, batch_timeout: float, dtype: str | None,
                 plugins: list[str], blocked: list[str]) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=INTERNAL_PATH,
                         stream=True)
        self.path, self.dtype, self.plugins, self.blocked = path, dtype, plugins, blocked

    def setup(self, device: str) -> None:
        from nlpkit.inference import load

        # Any: which verbs it has was settled by verbs_of before the routes were made.
        self.model: Any = load(self.path, plugins=self.plugins, blocked=self.blocked, dtype=self.dtype)

    def decode_request(self, request: dict) -> dict:  # a dict: LitServe then passes the route's payload as it is
        return request

    def batch(self, inputs: list[dict]) -> list[dict]:
        return inputs  # requests stay a list; predict groups them by verb and options

    def unbatch(self, output: Iterator[list[Event]]) -> Iterator[list[Event]]:
        yield from output  # a generator function: LitServe's streaming loop checks that it is one

    def predict(self, x: Any) -> Iterator[Any]:
        # max_batch_size 1: LitServe's unbatched loop hands one request, not a list, and takes one event per step.
        if self.max_batch_size == 1:
            for events in self.answer([x]):
                yield events[0]
        else:
            yield from self.answer(x)

    def encode_response(self, output: Iterator[Any]) -> Iterator[Any]:
        yield from output

    def answer(self, requests: list[dict]) -> Iterator[list[Event]]:
        """Events for each request, step by step (see the module's docstring)."""
        groups: dict[str, list[int]] = collections.defaultdict(list)
        for i, request in enumerate(requests):
            options = request.get("options", {})
            alone = f"#{i}" if options.get("do_sample") and options.get("seed") is not None else ""
            groups[request["verb"] + json.dumps(options, sort_keys=True) + alone].append(i)
        for members in groups.values():
            for events in self._group([requests[i] for i in members]):
                step: list[Event] = [None] * len(requests)
                for i, event in zip(members, events):
                    if event is not None and "delta" not in event:
                        event["batch_size"] = len(requests)
                    step[i] = event
                yield step

    def _group(self, requests: list[dict]) -> Iterator[list[Event]]:
        """Answer requests of one verb and options with one call of the model's verb; one alone if it fails."""
        streamed = False
        try:
            for events in self._call(requests):
                streamed = streamed or any(e is not None and "delta" in e for e in events)
                yield events
        except NlpkitError as error:
            if streamed:  # text already sent cannot be taken back: the whole group fails
                yield [{"error": " ".join(str(error).split())} for _ in requests]
                return
            # One bad input must not fail the requests batched with it: answer each alone.
            for i, request in enumerate(requests):
                try:
                    for events in self._call([request]):
                        yield [events[0] if j == i else None for j in range(len(requests))]
                except NlpkitError as alone:
                    yield [{"error": " ".join(str(alone).split())} if j == i else None for j in range(len(requests))]

    def _call(self, requests: list[dict]) -> Iterator[list[Event]]:
        """One call of the verb for all of ``requests``; streamed requests get their text as it comes."""
        verb, options = requests[0]["verb"], requests[0].get("options", {})
        inputs = [item for request in requests for item in request["inputs"]]
        if not any(request.get("stream") for request in requests):
            yield self._split(requests, self._run(verb, inputs, options))
            return
        # The call's rows are prompt-major (n continuations per prompt), and a request's prompts are consecutive:
        # row r is (request, that request's own row).
        per = options.get("num_return_sequences", 1)
        owner = [(i, k) for i, request in enumerate(requests) for k in range(len(request["inputs"]) * per)]
        for pieces, result in _in_thread(lambda on_text: self._run(verb, inputs, options, on_text)):
            if result is not None:
                yield self._split(requests, result)
                return
            deltas: list[list[list[Any]]] = [[] for _ in requests]
            for row, text in pieces.items():
                i, own_row = owner[row]
                if requests[i].get("stream"):
                    deltas[i].append([own_row, text])
            yield [{"delta": d} if d else None for d in deltas]

    def _run(self, verb: str, inputs: list[Any], options: dict[str, Any], on_text: OnText | None = None) -> list[Any]:
        if verb == "predict":
            # predict sorts a batch's inputs by length: chunks of 8 then pad little (measured fastest for 8-32
            # SST-2 sentences on 2 CPU cores, 1.4x one padded batch of 32).
            return self.model.predict(inputs, batch_size=PREDICT_CHUNK)
        if verb == "translate":
            return self.model.translate(inputs, **options)
        if verb == "embed":
            return self.model.embed(inputs).tolist()
        generate = self.model.generate if verb == "complete" else self.model.chat
        return [dataclasses.asdict(g) for g in generate(inputs, details=True, on_text=on_text, **options)]

    def _split(self, requests: list[dict], outputs: list[Any]) -> list[Event]:
        """The call's outputs, in input order, back to the requests they came from."""
        events: list[Event] = []
        start = 0
        for request in requests:
            count = len(request["inputs"])
            event: dict[str, Any] = {"outputs": outputs[start : start + count]}
            if request["verb"] == "embed":
                event["tokens"] = sum(len(e.ids) for e in self.model.tokenizer.encode_batch(request["inputs"]))
            events.append(event)
            start += count
        return events


def _in_thread(run: Callable[[OnText], list[Any]]) -> Iterator[tuple[dict[int, str], list[Any] | None]]:
    """Run ``run(on_text)`` in a thread, yielding the text it streams: ``({row: new text}, None)``, then ``({}, result)``.

    Generation reports its text through a callback; LitServe's loop takes a
    generator. A thread turns the one into the other (as ``transformers``'
    ``TextIteratorStreamer`` does); pieces that arrive together are merged so
    that a slow consumer does not fall behind token by token.
    """
    events: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()

    def work() -> None:
        try:
            events.put(("done", run(lambda row, text: events.put(("text", row, text))), None))
        except BaseException as error:  # re-raised in the consumer's thread, where the caller handles it
            events.put(("error", error, None))

    threading.Thread(target=work, name="nlpkit-generate", daemon=True).start()
    while True:
        pieces: dict[int, str] = {}
        kind, first, second = events.get()
        while kind == "text":
            pieces[first] = pieces.get(first, "") + second
            try:
                kind, first, second = events.get_nowait()
            except queue.Empty:
                kind = "pending"
        if pieces:
            yield pieces, None
        if kind == "done":
            yield {}, first
            return
        if kind == "error":
            raise first
