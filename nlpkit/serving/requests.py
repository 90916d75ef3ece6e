"""Request bodies -> the payload a worker answers, one function per endpoint; a bad body is a :class:`BadRequest`.

Checked in the API server, before anything reaches a worker: the shape and
types of every field, fields nlpkit does not support (a 400 naming the
field, never silently ignored), and the OpenAI fields' mapping onto
``nlpkit.generation``'s options:

=========================  ==================================================
OpenAI field               nlpkit.generation option
=========================  ==================================================
``max_tokens``             ``max_new_tokens`` (chat: or ``max_completion_tokens``)
``temperature``            ``0``: greedy (``do_sample=False``); above: ``do_sample=True, temperature``
``top_p``                  ``top_p``; sent without ``temperature``, it samples
``stop``                   ``stop`` (a string or a list of them)
``n``                      ``num_return_sequences``
``seed``                   ``seed``
=========================  ==================================================

A field not sent takes the model's own default (its ``generation_config.json``,
else greedy with 20 new tokens, as ``nlpkit generate``), not OpenAI's
``temperature=1``: the server answers as the Python API does.
"""

from __future__ import annotations

from typing import Any

from nlpkit.chat_data import check_messages
from nlpkit.errors import NlpkitError

__all__ = ["BadRequest", "predict_payload", "translate_payload", "embeddings_payload", "completion_payload",
           "chat_payload"]

# Options of /v1/translate passed on to translate(); the model's verb checks their values.
TRANSLATE_OPTIONS = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_k", "top_p", "length_penalty",
                     "repetition_penalty", "no_repeat_ngram_size", "num_return_sequences", "early_stopping", "seed",
                     "stop")
_EMBEDDING_FIELDS = ("input", "model", "encoding_format", "user")
_SAMPLING_FIELDS = ("max_tokens", "temperature", "top_p", "stop", "n", "seed", "stream", "stream_options", "model",
                    "user")
# OpenAI fields nlpkit does not implement, accepted only with the value that means "off".
_NEUTRAL = {"echo": (False,), "logprobs": (None, False, 0), "top_logprobs": (None, 0), "presence_penalty": (0,),
            "frequency_penalty": (0,), "best_of": (None, 1), "logit_bias": (None, {}), "suffix": (None, ""),
            "response_format": (None, {"type": "text"})}


class BadRequest(Exception):
    """A request nlpkit refuses: the HTTP status, a message naming the field, and the field (OpenAI's ``param``)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _string_list(value: Any, name: str, allow_objects: bool = False) -> list[Any]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadRequest(422, f"'{name}': expected a non-empty list, got {type(value).__name__}", name)
    for i, item in enumerate(value):
        if not isinstance(item, str) and not (allow_objects and isinstance(item, dict)):
            wanted = "a string or an object of the task's fields" if allow_objects else "a string"
            raise BadRequest(422, f"'{name}[{i}]': expected {wanted}, got {type(item).__name__}", f"{name}[{i}]")
    return value


def _only_fields(body: dict, known: tuple[str, ...]) -> None:
    for name, value in body.items():
        if name in known:
            continue
        if name in _NEUTRAL and value in _NEUTRAL[name]:
            continue
        what = "unsupported" if name in _NEUTRAL else "unknown or unsupported"
        raise BadRequest(400, f"{what} field '{name}' (supported: {', '.join(known)})", name)


def _required(body: dict, name: str, what: str) -> Any:
    if name not in body:
        raise BadRequest(422, f"missing field '{name}' ({what})", name)
    return body[name]


def _check_model(body: dict, model_id: str) -> None:
    if "model" in body and body["model"] != model_id:
        raise BadRequest(404, f"'model': unknown model {body['model']!r}; this server serves '{model_id}'", "model")


def predict_payload(body: dict) -> dict:
    _only_fields(body, ("inputs",))
    inputs = _required(body, "inputs", "a list of strings or objects of the task's fields")
    return {"verb": "predict", "inputs": _string_list(inputs, "inputs", allow_objects=True)}


def translate_payload(body: dict) -> dict:
    _only_fields(body, ("inputs", *TRANSLATE_OPTIONS))
    inputs = _required(body, "inputs", "a list of texts")
    options = {name: body[name] for name in TRANSLATE_OPTIONS if name in body}
    return {"verb": "translate", "inputs": _string_list(inputs, "inputs"), "options": options}


def embeddings_payload(body: dict, model_id: str) -> dict:
    _only_fields(body, _EMBEDDING_FIELDS)
    given = _required(body, "input", "a string or a list of strings")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):  # base64: what the openai package asks for unless told otherwise
        raise BadRequest(400, f"'encoding_format': expected 'float' or 'base64', got {encoding!r}", "encoding_format")
    _check_model(body, model_id)
    return {"verb": "embed", "inputs": _string_list(given, "input"), "encoding_format": encoding}


def completion_payload(body: dict, model_id: str) -> dict:
    """``/v1/completions``: ``prompt`` (a string or a list of them) and the sampling fields."""
    _only_fields(body, ("prompt", *_SAMPLING_FIELDS))
    prompt = _required(body, "prompt", "a string or a list of strings")
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) or isinstance(p, list) for p in prompt):
        raise BadRequest(400, "'prompt': token-id prompts are not supported; send text", "prompt")
    return _sampling(body, model_id, "complete", _string_list(prompt, "prompt"))


def chat_payload(body: dict, model_id: str) -> dict:
    """``/v1/chat/completions``: ``messages`` (one conversation) and the sampling fields."""
    _only_fields(body, ("messages", "max_completion_tokens", *_SAMPLING_FIELDS))
    messages = _required(body, "messages", "a list of {role, content} objects")
    if isinstance(messages, list):  # OpenAI's content parts: [{"type": "text", "text": ...}, ...] is one text
        messages = [{**m, "content": _text_of_parts(m["content"], i)}
                    if isinstance(m, dict) and isinstance(m.get("content"), list) else m
                    for i, m in enumerate(messages)]
    try:
        conversation = check_messages(messages, "request")
    except NlpkitError as error:
        raise BadRequest(422, str(error), "messages") from None
    if "max_completion_tokens" in body:
        if "max_tokens" in body:
            raise BadRequest(400, "send one of 'max_tokens' and 'max_completion_tokens'", "max_completion_tokens")
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    return _sampling(body, model_id, "chat", [conversation])


def _text_of_parts(parts: list[Any], number: int) -> Any:
    texts = []
    for part in parts:
        if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise BadRequest(400, f"'messages[{number}].content': only text parts are supported, got {kind!r}",
                             f"messages[{number}].content")
        texts.append(part["text"])
    return "".join(texts)


def _number(body: dict, name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (low < value if low_open else low <= value) and value <= high):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise BadRequest(400, f"'{name}': expected a number in {interval}, got {value!r}", name)
    return float(value)


def _integer(body: dict, name: str, low: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BadRequest(400, f"'{name}': expected an integer >= {low}, got {value!r}", name)
    return value


def _sampling(body: dict, model_id: str, verb: str, inputs: list[Any]) -> dict:
    """The payload of a completion: the OpenAI fields checked and mapped onto decoding options (see the module)."""
    _check_model(body, model_id)
    options: dict[str, Any] = {}
    max_tokens = _integer(body, "max_tokens", 1)
    if max_tokens is not None:
        options["max_new_tokens"] = max_tokens
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1, low_open=True)
    if temperature is not None:
        options["do_sample"] = temperature > 0
        if temperature > 0:
            options["temperature"] = temperature
    elif top_p is not None:
        options["do_sample"] = True
    if top_p is not None:
        options["top_p"] = top_p
    n = _integer(body, "n", 1)
    if n is not None:
        if n > 1 and temperature == 0:
            raise BadRequest(400, f"'n': greedy decoding (temperature 0) has one answer per prompt, got n={n}", "n")
        options["num_return_sequences"] = n
    seed = _integer(body, "seed", 0)
    if seed is not None:
        options["seed"] = seed
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not stops or not all(isinstance(s, str) and s for s in stops):
            raise BadRequest(400, f"'stop': expected a non-empty string or a list of them, got {stop!r}", "stop")
        options["stop"] = stops
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest(400, f"'stream': expected true or false, got {stream!r}", "stream")
    include_usage = False
    if body.get("stream_options") is not None:
        given = body["stream_options"]
        if not stream:
            raise BadRequest(400, "'stream_options': only with 'stream': true", "stream_options")
        if not isinstance(given, dict) or set(given) - {"include_usage"} or not isinstance(
                given.get("include_usage", False), bool):
            raise BadRequest(400, f"'stream_options': expected {{\"include_usage\": true or false}}, got {given!r}",
                             "stream_options")
        include_usage = given.get("include_usage", False)
    if "user" in body and not isinstance(body["user"], str):
        raise BadRequest(400, f"'user': expected a string, got {type(body['user']).__name__}", "user")
    return {"verb": verb, "inputs": inputs, "options": options, "stream": stream, "include_usage": include_usage}
