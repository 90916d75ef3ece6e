"""``nlpkit serve``: a run folder or a pretrained folder behind an HTTP API, on LitServe.

LitServe (Lightning's serving library) owns the processes, the request queue
and the dynamic batching: each inference worker holds one copy of the model
and, when free, collects requests for ``batch_timeout`` or until it has
``max_batch_size``. nlpkit adds what LitServe leaves to the
application, one module each:

- :mod:`nlpkit.serving.requests`: each endpoint's request checks and the
  OpenAI fields' mapping onto ``nlpkit.generation``'s options;
- :mod:`nlpkit.serving.worker`: the one LitAPI, answering every verb of one
  model copy (LitServe starts workers per LitAPI: one per endpoint would load
  the model once per endpoint), grouping a batch by verb and options;
- :mod:`nlpkit.serving.routes`: the routes (JSON errors, bearer-token auth, a
  bound on the requests waiting, server-sent events, a batch-size counter);
- :mod:`nlpkit.serving.responses`: OpenAI's response and stream-chunk shapes.

Endpoints (those the model supports, :func:`verbs_of`): ``POST /v1/predict``,
``POST /v1/completions`` and ``POST /v1/chat/completions`` (decoders; chat
needs a chat template), ``POST /v1/embeddings`` (OpenAI's shape),
``POST /v1/translate``, ``GET /v1/models``, ``GET /health`` (readiness and the
batch-size counter; never behind the API key, so a load balancer can probe it).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import litserve as ls

from nlpkit.errors import NlpkitError
from nlpkit.serving.routes import Routes
from nlpkit.serving.worker import GENERATING_VERBS, ModelAPI

__all__ = ["ServeOptions", "verbs_of", "build_server", "serve"]

logger = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    """How ``nlpkit serve`` runs; the CLI flags of the same names.

    Attributes:
        path: the run folder or pretrained folder.
        host: the interface to listen on.
        port: the TCP port.
        max_batch_size: requests handed to the model together (1: no batching).
        batch_timeout_ms: how long a free worker collects requests for a batch; None: the model's
            :func:`default_batch_timeout_ms`. 0 takes only the requests waiting, but LitServe then polls its
            queue without pause (a core busy while idle).
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
    batch_timeout_ms: float | None = None
    workers: int = 1
    dtype: str | None = None
    api_key: str | None = None
    max_queue: int = 256
    max_body_bytes: int = 4 * 1024 * 1024
    plugins: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)


def verbs_of(model: Any) -> list[str]:
    """The endpoints' verbs a loaded model supports: ``predict``, ``complete``, ``chat``, ``embed``, ``translate``.

    ``chat`` needs a decoder whose tokenizer has a chat template (a run trained on chat data, an instruct folder).
    """
    from nlpkit.backbones.config import config_of
    from nlpkit.inference import LoadedModel
    from nlpkit.tasks import GeneratesText

    if isinstance(model, LoadedModel):
        generates = isinstance(model.task, GeneratesText)
        kind, tokenizer, verbs = model.model.backbone.config.kind, model.task.tokenizer, ["predict"]
    else:
        generates = model.has_lm_head
        kind, tokenizer, verbs = config_of(model.backbone).kind, model.tokenizer, []
        if kind == "encoder":
            return ["embed"]
    if generates and kind == "encoder-decoder":
        verbs.append("translate")
    elif generates and kind == "decoder":
        verbs.append("complete")
        if getattr(tokenizer, "chat_template", None):
            verbs.append("chat")
    return verbs


def default_batch_timeout_ms(verbs: list[str]) -> float:
    """The batching window for a model with these verbs: 10 ms for a model that generates text, else 1 ms.

    A lone request waits out the window, and one that just misses it waits for the whole next model call, so the
    window should be short beside one call. Measured on 2 CPU cores (benchmarks/README.md): an ``sst2-minilm``
    batch takes milliseconds, and in bfloat16 1 ms served one client 80-87 requests/s against 46-47 with 10 ms,
    and 32 clients as many; a GPT-2-size decoder's call takes seconds, and 32 clients got 265 completion tokens/s
    with 10 ms against 164 with 1 ms (the clients of a finished batch send their next requests over a few ms).
    """
    return 10.0 if set(verbs) & {*GENERATING_VERBS, "translate"} else 1.0


def build_server(options: ServeOptions, verbs: list[str]) -> ls.LitServer:
    """A LitServer with nlpkit's routes for ``verbs`` (see :func:`verbs_of`); :func:`serve` runs it."""
    timeout_ms = options.batch_timeout_ms if options.batch_timeout_ms is not None else default_batch_timeout_ms(verbs)
    with warnings.catch_warnings():
        # LitServe warns when batch/unbatch exist but max_batch_size is 1; nlpkit's ModelAPI handles both cases.
        warnings.filterwarnings("ignore", message=".*both batch and unbatch", category=UserWarning)
        api = ModelAPI(options.path, max_batch_size=options.max_batch_size,
                       batch_timeout=timeout_ms / 1000, dtype=options.dtype, plugins=options.plugins,
                       blocked=options.blocked)
    # CPU only for now: the verbs keep their tensors on the CPU (see the README's Serving section).
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=options.workers,
                          max_payload_size=options.max_body_bytes, disable_openapi_url=True)
    Routes(server, api, verbs, path=options.path, api_key=options.api_key, max_queue=options.max_queue).add_to(
        server.app)
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
        raise NlpkitError(f"{options.path}: nothing to serve (a decoder or encoder-decoder folder without LM head "
                          f"weights)")
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
