"""The public HTTP routes, in the API server process: checks, auth, the queue bound, streaming, the batch counter.

Each route checks its body (:mod:`nlpkit.serving.requests`), submits the
payload to the worker queue through LitServe's request handler and reads the
worker's events for it from LitServe's response buffer (see
:mod:`nlpkit.serving.worker`). A streamed completion waits for its first
event before it answers, so that a request the model refuses (a prompt longer
than the context window) is still a JSON 400, not a broken stream; after that
the answer is ``text/event-stream`` in OpenAI's chunk format, ending with
``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hmac
import json
import logging
import pickle
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from litserve.server import StreamingRequestHandler
from litserve.utils import LitAPIStatus, ResponseBufferItem, WorkerSetupStatus
from starlette.exceptions import HTTPException
from starlette.responses import Response

from nlpkit.serving import requests
from nlpkit.serving.requests import BadRequest
from nlpkit.serving.responses import Completion
from nlpkit.serving.worker import INTERNAL_PATH, ModelAPI

__all__ = ["Routes", "error"]

logger = logging.getLogger(__name__)


def error(status: int, message: str, param: str | None = None) -> JSONResponse:
    """OpenAI's error shape, so that OpenAI clients show the message."""
    kind = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large",
            503: "server_overloaded"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


def _failure(data: Any) -> JSONResponse:
    """A worker's failure (not a refused input, which is an event of its own) as a JSON error."""
    if isinstance(data, bytes):  # LitServe pickles a worker's exception; it comes from nlpkit's own worker
        with contextlib.suppress(Exception):
            data = pickle.loads(data)
    if isinstance(data, HTTPException):  # LitServe's own: 504 when a request waited past its timeout
        return error(data.status_code, str(data.detail))
    logger.error("the model worker failed: %r", data)
    return error(500, "the model worker failed (see the server's log)")


class Routes:
    """nlpkit's routes on a LitServer's app, for the verbs the model supports."""

    def __init__(self, server: ls.LitServer, api: ModelAPI, verbs: list[str], *, path: str, api_key: str | None,
                 max_queue: int) -> None:
        self.server, self.verbs, self.api_key, self.max_queue = server, verbs, api_key, max_queue
        self.handler = StreamingRequestHandler(api, server)
        self.model_id = Path(path).resolve().name
        self.created = int(Path(path).stat().st_mtime)
        self.pending = 0  # one asyncio loop per API server process: no lock needed
        # batch size -> requests served in a batch of that size (counted where the answers arrive).
        self.batch_sizes: collections.Counter[int] = collections.Counter()

    def add_to(self, app: FastAPI) -> None:
        # LitServe's own routes for the LitAPI and its plain-text /health, /info give way to nlpkit's.
        app.router.routes[:] = [r for r in app.router.routes
                                if getattr(r, "path", None) not in (INTERNAL_PATH, "/health", "/info")]
        app.add_api_route("/health", self.health, methods=["GET"])
        app.add_api_route("/v1/models", self.guarded(self.models), methods=["GET"])
        model_id = self.model_id
        endpoints: dict[str, tuple[str, Callable[[dict], dict]]] = {
            "predict": ("/v1/predict", requests.predict_payload),
            "translate": ("/v1/translate", requests.translate_payload),
            "embed": ("/v1/embeddings", lambda body: requests.embeddings_payload(body, model_id)),
            "complete": ("/v1/completions", lambda body: requests.completion_payload(body, model_id)),
            "chat": ("/v1/chat/completions", lambda body: requests.chat_payload(body, model_id)),
        }
        for verb in self.verbs:
            path, build = endpoints[verb]
            app.add_api_route(path, self.guarded(self._endpoint(build)), methods=["POST"])

        @app.exception_handler(HTTPException)
        async def http_error(request: Request, failure: HTTPException) -> JSONResponse:
            # Starlette's 404/405, LitServe's 413 (FastAPI's HTTPException is a subclass) in nlpkit's JSON shape.
            return error(failure.status_code, str(failure.detail))

    def guarded(self, route: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def checked(request: Request) -> Response:
            if self.api_key is not None:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                    return error(401, "missing or wrong API key (send 'Authorization: Bearer KEY')")
            return await route(request)
        return checked

    async def health(self, request: Request) -> JSONResponse:
        status = self.server.workers_setup_status
        ready = bool(status) and all(v == WorkerSetupStatus.READY for v in status.values())
        return JSONResponse({"status": "ok" if ready else "starting", "pending": self.pending,
                             "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())}},
                            status_code=200 if ready else 503)

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": self.model_id, "object": "model",
                                                         "created": self.created, "owned_by": "nlpkit"}]})

    def _endpoint(self, build: Callable[[dict], dict]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as bad_json:
                return error(400, f"request body: not valid JSON ({bad_json})")
            if not isinstance(body, dict):
                return error(422, f"request body: expected a JSON object, got {type(body).__name__}")
            try:
                payload = build(body)
            except BadRequest as bad:
                return error(bad.status, bad.message, bad.param)
            if self.pending >= self.max_queue:
                # LitServe's queue has no bound of its own: refuse rather than let waiting requests pile up.
                return error(503, f"server busy: {self.pending} requests waiting (--max-queue); retry later")
            return await self._answer(payload)
        return endpoint

    async def _answer(self, payload: dict) -> Response:
        self.pending += 1
        events = self._events(payload)
        streaming = False
        try:
            async for event in events:
                if payload.get("stream") and "error" not in event:  # the first text (or the answer): the stream starts
                    streaming = True
                    return StreamingResponse(self._stream(payload, event, events), media_type="text/event-stream")
                return self._final(payload, event)
            return error(500, "the model worker ended without an answer")
        except _WorkerFailed as failed:
            return _failure(failed.data)
        finally:
            if not streaming:
                await events.aclose()
                self.pending -= 1

    async def _events(self, payload: dict) -> AsyncGenerator[dict[str, Any], None]:
        """The worker's events for this request (None events skipped); raises _WorkerFailed on a worker error."""
        uid, _ = await self.handler._submit_request(payload)
        ready = asyncio.Event()
        self.server.response_buffer[uid] = ResponseBufferItem(event=ready, response_queue=collections.deque())
        try:
            async for data, status in self.server.data_streamer(
                    self.server.response_buffer[uid].response_queue, data_available=ready, send_status=True):
                if status == LitAPIStatus.ERROR:
                    raise _WorkerFailed(data)
                if data:  # format_encoded_response made a dict a JSON line; None: nothing new for this request
                    event = json.loads(data)
                    if "batch_size" in event:
                        self.batch_sizes[event["batch_size"]] += 1
                    yield event
        finally:
            self.server.response_buffer.pop(uid, None)  # later events for it are dropped

    def _final(self, payload: dict, event: dict[str, Any]) -> JSONResponse:
        if "error" in event:
            return error(400, event["error"])
        outputs = event["outputs"]
        verb = payload["verb"]
        if verb in ("complete", "chat"):
            return JSONResponse(Completion(verb, self.model_id).whole(outputs))
        if verb == "embed":
            if payload["encoding_format"] == "base64":  # OpenAI's: the float32 values' little-endian bytes
                outputs = [base64.b64encode(struct.pack(f"<{len(e)}f", *e)).decode() for e in outputs]
            data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(outputs)]
            return JSONResponse({"object": "list", "data": data, "model": self.model_id,
                                 "usage": {"prompt_tokens": event["tokens"], "total_tokens": event["tokens"]}})
        return JSONResponse({"outputs": outputs})

    async def _stream(self, payload: dict, first: dict[str, Any], events: AsyncGenerator[dict[str, Any], None]
                      ) -> AsyncIterator[str]:
        completion = Completion(payload["verb"], self.model_id)
        try:
            event: dict[str, Any] | None = first
            while event is not None and "delta" in event:
                for row, text in event["delta"]:
                    yield completion.delta(row, text)
                event = await anext(events, None)
            if event is None or "error" in event:
                # Headers are sent: an error can only be a last chunk in OpenAI's error shape.
                message = event["error"] if event is not None else "the model worker ended without an answer"
                yield f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
                return
            for chunk in completion.ends(event["outputs"], payload["include_usage"]):
                yield chunk
        except _WorkerFailed as failed:
            body = json.loads(bytes(_failure(failed.data).body))
            yield f"data: {json.dumps(body)}\n\n"
        finally:
            await events.aclose()
            self.pending -= 1


class _WorkerFailed(Exception):
    def __init__(self, data: Any) -> None:
        super().__init__("worker failed")
        self.data = data
