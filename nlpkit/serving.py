"""``nlpkit serve``: a run folder or a pretrained folder behind an HTTP API, on LitServe.

LitServe (Lightning's serving library) owns the processes, the request queue
and the dynamic batching: each inference worker holds one copy of the model
and is handed up to ``max_batch_size`` requests that arrived within
``batch_timeout`` of each other. nlpkit adds only what LitServe leaves to the
application: the endpoints and their request checks, JSON errors, bearer-token
auth, a bound on the requests waiting, and a counter of the batch sizes served.

All endpoints go through ONE LitAPI, so a worker's one model copy serves every
verb: LitServe starts workers per LitAPI, and one LitAPI per endpoint would
load the model once per endpoint. The LitAPI's own route is removed; each
public route checks its request, then submits ``{"verb": ..., ...}`` to the
LitAPI's queue through LitServe's request handler. A batch may mix verbs; the
worker answers each verb's requests (and, for translate, each set of equal
decoding options) with one call of the model's verb.

Endpoints (those the model supports): ``POST /v1/predict``, ``POST /v1/embeddings``
(OpenAI's shape), ``POST /v1/translate``, ``GET /v1/models``, ``GET /health``
(readiness and the batch-size counter; never behind the API key, so a load
balancer can probe it).
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import os
import signal
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import litserve as ls
from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from fastapi.responses import JSONResponse
from litserve.server import RegularRequestHandler
from litserve.utils import WorkerSetupStatus

from nlpkit.errors import NlpkitError

__all__ = ["ServeOptions", "verbs_of", "build_server", "serve"]

logger = logging.getLogger(__name__)

# LitServe registers the LitAPI at this path; nlpkit removes that route and submits to its queue itself.
_INTERNAL_PATH = "/_nlpkit/model"
# Options of /v1/translate passed on to translate(); the model's verb checks their values.
_TRANSLATE_OPTIONS = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_k", "top_p", "length_penalty",
                      "repetition_penalty", "no_repeat_ngram_size", "num_return_sequences", "early_stopping", "seed",
                      "stop")
_EMBEDDING_FIELDS = ("input", "model", "encoding_format", "user")


@dataclass
class ServeOptions:
    """How ``nlpkit serve`` runs; the CLI flags of the same names.

    Attributes:
        path: the run folder or pretrained folder.
        host: the interface to listen on.
        port: the TCP port.
        max_batch_size: requests handed to the model together (1: no batching).
        batch_timeout_ms: how long a worker waits for a batch to fill.
        workers: model copies (inference worker processes) per device.
        dtype: the weights' dtype (``bfloat16`` ...); None keeps float32.
        api_key: when set, every endpoint but ``/health`` needs ``Authorization: Bearer KEY``.
        max_queue: requests accepted but not yet answered; one more gets 503.
        max_body_bytes: a larger request body gets 413.
        plugins: extra plugin modules; blocked: plugin names not to load.
    """

    path: str
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    batch_timeout_ms: float = 10.0
    workers: int = 1
    dtype: str | None = None
    api_key: str | None = None
    max_queue: int = 256
    max_body_bytes: int = 4 * 1024 * 1024
    plugins: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


def verbs_of(model: Any) -> list[str]:
    """The endpoints' verbs a loaded model supports: ``predict``, ``embed``, ``translate``."""
    from nlpkit.backbones.config import config_of
    from nlpkit.inference import LoadedModel
    from nlpkit.tasks import GeneratesText

    if isinstance(model, LoadedModel):
        verbs = ["predict"]
        if isinstance(model.task, GeneratesText) and model.model.backbone.config.kind == "encoder-decoder":
            verbs.append("translate")
        return verbs
    kind = config_of(model.backbone).kind
    if kind == "encoder":
        return ["embed"]
    return ["translate"] if kind == "encoder-decoder" and model.has_lm_head else []


class ModelAPI(ls.LitAPI):
    """The one LitAPI: every verb of one model copy per worker, batched across requests."""

    def __init__(self, options: ServeOptions) -> None:
        super().__init__(max_batch_size=options.max_batch_size, batch_timeout=options.batch_timeout_ms / 1000,
                         api_path=_INTERNAL_PATH)
        self.options = options

    def setup(self, device: str) -> None:
        from nlpkit.inference import load

        # Any: which verbs it has was settled by verbs_of before the routes were made.
        self.model: Any = load(self.options.path, plugins=self.options.plugins, blocked=self.options.blocked,
                                dtype=self.options.dtype)

    def decode_request(self, request: dict) -> dict:  # a dict: LitServe then passes the route's payload as it is
        return request

    def batch(self, inputs: list[dict]) -> list[dict]:
        return inputs  # requests stay a list; predict groups them by verb

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def predict(self, x: Any) -> Any:
        # max_batch_size 1: LitServe's unbatched loop hands one request, not a list.
        if self.max_batch_size == 1:
            return self._answer([x])[0]
        return self._answer(x)

    def encode_response(self, output: dict) -> dict:
        return output

    def _answer(self, requests: list[dict]) -> list[dict]:
        """One answer per request: ``{"outputs": ..., "batch_size": n}`` or ``{"error": message}``."""
        answers: list[dict] = [{} for _ in requests]
        groups: dict[str, list[int]] = collections.defaultdict(list)
        for i, request in enumerate(requests):
            groups[request["verb"] + json.dumps(request.get("options", {}), sort_keys=True)].append(i)
        for members in groups.values():
            try:
                self._run_group([requests[i] for i in members], [answers[i] for i in members])
            except NlpkitError:
                # One bad input must not fail the requests batched with it: answer each alone.
                for i in members:
                    try:
                        self._run_group([requests[i]], [answers[i]])
                    except NlpkitError as error:
                        answers[i].clear()
                        answers[i]["error"] = " ".join(str(error).split())
        for answer in answers:
            answer["batch_size"] = len(requests)
        return answers

    def _run_group(self, requests: list[dict], answers: list[dict]) -> None:
        """Answer requests of one verb (and options) with one call of the model's verb."""
        verb = requests[0]["verb"]
        texts = [item for request in requests for item in request["inputs"]]
        if verb == "predict":
            outputs: list[Any] = self.model.predict(texts)
        elif verb == "translate":
            outputs = self.model.translate(texts, **requests[0].get("options", {}))
        else:
            outputs = self.model.embed(texts).tolist()
        start = 0
        for request, answer in zip(requests, answers):
            count = len(request["inputs"])
            answer["outputs"] = outputs[start : start + count]
            if verb == "embed":
                answer["tokens"] = sum(len(e.ids) for e in self.model.tokenizer.encode_batch(request["inputs"]))
            start += count


class _BadRequest(Exception):
    """A request nlpkit refuses; the route answers it as a JSON error."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    # OpenAI's error shape, so that OpenAI clients show the message.
    kind = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large",
            503: "server_overloaded"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status_code=status)


def _string_list(value: Any, name: str, allow_objects: bool = False) -> list[Any]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _BadRequest(422, f"'{name}': expected a non-empty list, got {type(value).__name__}", name)
    for i, item in enumerate(value):
        if not isinstance(item, str) and not (allow_objects and isinstance(item, dict)):
            wanted = "a string or an object of the task's fields" if allow_objects else "a string"
            raise _BadRequest(422, f"'{name}[{i}]': expected {wanted}, got {type(item).__name__}", f"{name}[{i}]")
    return value


def _only_fields(body: dict, known: tuple[str, ...]) -> None:
    for name in body:
        if name not in known:
            raise _BadRequest(400, f"unknown or unsupported field '{name}' (supported: {', '.join(known)})", name)


def _predict_payload(body: dict) -> dict:
    _only_fields(body, ("inputs",))
    if "inputs" not in body:
        raise _BadRequest(422, "missing field 'inputs' (a list of strings or objects of the task's fields)", "inputs")
    return {"verb": "predict", "inputs": _string_list(body["inputs"], "inputs", allow_objects=True)}


def _translate_payload(body: dict) -> dict:
    _only_fields(body, ("inputs", *_TRANSLATE_OPTIONS))
    if "inputs" not in body:
        raise _BadRequest(422, "missing field 'inputs' (a list of texts)", "inputs")
    options = {name: body[name] for name in _TRANSLATE_OPTIONS if name in body}
    return {"verb": "translate", "inputs": _string_list(body["inputs"], "inputs"), "options": options}


def _embeddings_payload(body: dict, model_id: str) -> dict:
    _only_fields(body, _EMBEDDING_FIELDS)
    if "input" not in body:
        raise _BadRequest(422, "missing field 'input' (a string or a list of strings)", "input")
    if body.get("encoding_format", "float") != "float":
        raise _BadRequest(400, f"'encoding_format': only 'float' is supported, got {body['encoding_format']!r}",
                          "encoding_format")
    if "model" in body and body["model"] != model_id:
        raise _BadRequest(404, f"'model': unknown model {body['model']!r}; this server serves '{model_id}'", "model")
    return {"verb": "embed", "inputs": _string_list(body["input"], "input")}


class _Routes:
    """The public routes, in the API server process: checks, auth, the queue bound, the batch counter."""

    def __init__(self, server: ls.LitServer, api: ModelAPI, verbs: list[str], options: ServeOptions) -> None:
        self.server, self.options, self.verbs = server, options, verbs
        self.handler = RegularRequestHandler(api, server)
        self.model_id = Path(options.path).resolve().name
        self.created = int(Path(options.path).stat().st_mtime)
        self.pending = 0  # one asyncio loop per API server process: no lock needed
        # batch size -> requests served in a batch of that size (counted where the answers arrive).
        self.batch_sizes: collections.Counter[int] = collections.Counter()

    def add_to(self, app: FastAPI) -> None:
        # LitServe's own routes for the LitAPI and its plain-text /health, /info give way to nlpkit's.
        app.router.routes[:] = [r for r in app.router.routes
                                if getattr(r, "path", None) not in (_INTERNAL_PATH, "/health", "/info")]
        app.add_api_route("/health", self.health, methods=["GET"])
        app.add_api_route("/v1/models", self.guarded(self.models), methods=["GET"])
        builders: dict[str, tuple[str, Callable[[dict], dict], Callable[[dict], dict]]] = {
            "predict": ("/v1/predict", _predict_payload, self._outputs),
            "translate": ("/v1/translate", _translate_payload, self._outputs),
            "embed": ("/v1/embeddings", lambda body: _embeddings_payload(body, self.model_id), self._embeddings),
        }
        for verb in self.verbs:
            path, build, shape = builders[verb]
            app.add_api_route(path, self.guarded(self._endpoint(build, shape)), methods=["POST"])

        @app.exception_handler(HTTPException)
        async def http_error(request: Request, error: HTTPException) -> JSONResponse:
            # Starlette's 404/405, LitServe's 413 and 504 (FastAPI's HTTPException is a subclass) in nlpkit's JSON shape.
            return _error(error.status_code, str(error.detail))

    def guarded(self, route: Callable[[Request], Awaitable[JSONResponse]]) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def checked(request: Request) -> JSONResponse:
            if self.options.api_key is not None:
                given = request.headers.get("authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {self.options.api_key}".encode()):
                    return _error(401, "missing or wrong API key (send 'Authorization: Bearer KEY')")
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

    def _endpoint(self, build: Callable[[dict], dict],
                  shape: Callable[[dict], dict]) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                return _error(400, f"request body: not valid JSON ({error})")
            if not isinstance(body, dict):
                return _error(422, f"request body: expected a JSON object, got {type(body).__name__}")
            try:
                payload = build(body)
            except _BadRequest as bad:
                return _error(bad.status, bad.message, bad.param)
            if self.pending >= self.options.max_queue:
                # LitServe's queue has no bound of its own: refuse rather than let waiting requests pile up.
                return _error(503, f"server busy: {self.pending} requests waiting (--max-queue); retry later")
            self.pending += 1
            try:
                answer = await self.handler.handle_request(payload, dict)
            finally:
                self.pending -= 1
            self.batch_sizes[answer["batch_size"]] += 1
            if "error" in answer:
                return _error(400, answer["error"])
            return JSONResponse(shape(answer))
        return endpoint

    def _outputs(self, answer: dict) -> dict:
        return {"outputs": answer["outputs"]}

    def _embeddings(self, answer: dict) -> dict:
        data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(answer["outputs"])]
        return {"object": "list", "data": data, "model": self.model_id,
                "usage": {"prompt_tokens": answer["tokens"], "total_tokens": answer["tokens"]}}


def build_server(options: ServeOptions, verbs: list[str]) -> ls.LitServer:
    """A LitServer with nlpkit's routes for ``verbs`` (see :func:`verbs_of`); :func:`serve` runs it."""
    with warnings.catch_warnings():
        # LitServe warns when batch/unbatch exist but max_batch_size is 1; nlpkit's ModelAPI handles both cases.
        warnings.filterwarnings("ignore", message=".*both batch and unbatch", category=UserWarning)
        api = ModelAPI(options)
    # CPU only in this increment: the verbs keep their tensors on the CPU (see the README's Serving section).
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=options.workers,
                          max_payload_size=options.max_body_bytes, disable_openapi_url=True)
    _Routes(server, api, verbs, options).add_to(server.app)
    return server


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            probe.bind((host, port))
        except OSError as error:
            raise NlpkitError(f"--host/--port: cannot listen on {host}:{port} ({error.strerror})") from None


def serve(options: ServeOptions) -> None:
    """Load the model to learn its verbs, then serve it until SIGTERM or Ctrl+C.

    Raises:
        NlpkitError: the port is taken, the folder cannot be loaded, or its model has nothing to serve.
    """
    from nlpkit.inference import load

    _check_port(options.host, options.port)  # before the model loads, and in one line (uvicorn: a log line, exit 3)
    model = load(options.path, plugins=options.plugins, blocked=options.blocked, dtype=options.dtype)
    verbs = verbs_of(model)
    del model  # the workers load their own copies
    if not verbs:
        raise NlpkitError(f"{options.path}: nothing to serve (a decoder's generation endpoints come later, issue 19)")
    server = build_server(options, verbs)

    main_process = os.getpid()

    def stop(signum: int, frame: Any) -> None:
        # LitServe shuts down gracefully on KeyboardInterrupt: uvicorn finishes the requests in flight, then the
        # workers stop. Without this a SIGTERM (docker stop, Kubernetes) would kill the server process at once.
        if os.getpid() != main_process:
            return  # the forked uvicorn process inherits this handler; uvicorn re-raises SIGTERM once it has stopped
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the shutdown
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    logger.info("nlpkit serve: %s on http://%s:%d (%s)", Path(options.path).name, options.host, options.port,
                ", ".join(verbs))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers are forked/spawned processes
    start = time.monotonic()
    # One API server process (LitServe's default is one per worker): it only parses and waits, the model is the
    # bottleneck, and one process keeps the queue bound and the batch counter exact.
    server.run(host=options.host, port=options.port, num_api_servers=1, generate_client_file=False,
               log_level="warning")
    logger.info("nlpkit serve: stopped after %.0f s", time.monotonic() - start)
