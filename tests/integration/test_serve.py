"""``nlpkit serve`` as a user runs it: the real server in a subprocess, spoken to over HTTP on 127.0.0.1.

One server per model: a tiny run of each built-in task (classification, NER,
QA, generation on chat data, translation), the generation run exported as a
pretrained decoder folder, and a tiny pretrained BERT folder for embeddings.
Every answer is compared with the Python API's answer to the same inputs; the
OpenAI endpoints are also called with the ``openai`` package.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64decode
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

import nlpkit
from nlpkit.testing import tiny_classification_data, tiny_recipe
from tests.helpers import save_tiny_bert, sentiment_rows

pytest.importorskip("litserve")

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "secret-key"


class Server:
    """A running ``nlpkit serve`` subprocess and a small JSON client for it."""

    def __init__(self, path: Path, *flags: str) -> None:
        with socket.socket() as probe:  # a free port: bind to 0, read it back, release it
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"),
                                                             os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen([sys.executable, "-m", "nlpkit.cli", "serve", str(path), "--port",
                                         str(self.port), *flags], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nlpkit serve exited with {self.process.returncode}:\n{self.process.stdout.read()}")
            try:
                if self.call("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("nlpkit serve did not become ready in 90 s")

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             key: str | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        if key is not None:
            request.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def stream(self, path: str, body: Any, key: str | None = API_KEY) -> list[Any]:
        """A streamed answer's server-sent events: each ``data:`` line's JSON, and the final "[DONE]"."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=json.dumps(body).encode(),
                                         method="POST", headers={"Content-Type": "application/json",
                                                                 "Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.read().decode().split("\n\n")
        events = [line.removeprefix("data: ") for line in lines if line]
        assert all(line.startswith("data: ") for line in lines if line), lines
        return [event if event == "[DONE]" else json.loads(event) for event in events]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve-classification")
    return nlpkit.run(tiny_recipe("classification", tiny_classification_data(folder), folder / "runs")).run_dir


@pytest.fixture(scope="module")
def classifier(classification_run) -> Iterator[Server]:
    # A long batch timeout, so that the concurrent requests of the batching test surely meet in one batch.
    server = Server(classification_run, "--max-batch-size", "16", "--batch-timeout-ms", "200", "--api-key", API_KEY,
                    "--max-queue", "10")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory) -> Path:
    from tests.plugins.test_ner import conll_files

    folder = tmp_path_factory.mktemp("serve-ner")
    return nlpkit.run(tiny_recipe("ner", conll_files(folder), folder / "runs")).run_dir


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    from nlpkit.tokenization import Tokenizer

    folder = tmp_path_factory.mktemp("serve-bert")
    texts = [row["text"] for row in sentiment_rows(200, 7)]
    return save_tiny_bert(folder, Tokenizer.train(texts, "wordpiece", vocab_size=200, min_frequency=1, max_length=64))


def close(got: Any, expected: Any) -> bool:
    """Equal JSON values, floats within 1e-5."""
    if isinstance(expected, float):
        return got == pytest.approx(expected, abs=1e-5)
    if isinstance(expected, dict):
        return isinstance(got, dict) and got.keys() == expected.keys() and all(close(got[k], v) for k, v in expected.items())
    if isinstance(expected, (list, tuple)):
        return isinstance(got, list) and len(got) == len(expected) and all(map(close, got, expected))
    return got == expected


TEXTS = ["a great lovely film", "a dreadful grim story", "the happy kind actor"]


def test_predict_answers_as_the_python_api(classifier, classification_run):
    status, answer = classifier.call("POST", "/v1/predict", {"inputs": TEXTS}, key=API_KEY)
    assert status == 200, answer
    expected = nlpkit.load(classification_run).predict(TEXTS)
    assert answer["outputs"] == json.loads(json.dumps(expected))  # a float survives JSON exactly


def test_models_and_health(classifier, classification_run):
    status, models = classifier.call("GET", "/v1/models", key=API_KEY)
    assert status == 200
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [classification_run.name]
    assert models["data"][0]["object"] == "model"
    status, health = classifier.call("GET", "/health")  # no key needed: a load balancer probes it
    assert status == 200 and health["status"] == "ok" and "batch_sizes" in health


def test_concurrent_requests_are_batched(classifier, classification_run):
    expected = nlpkit.load(classification_run).predict(TEXTS)
    before = classifier.call("GET", "/health")[1]["batch_sizes"]

    def one(i: int) -> tuple[int, Any]:
        return classifier.call("POST", "/v1/predict", {"inputs": [TEXTS[i % 3]]}, key=API_KEY)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(8)))
    for i, (status, answer) in enumerate(answers):
        # Batched with others, an input is padded to another length: the same answer up to float rounding.
        assert status == 200 and close(answer["outputs"], [expected[i % 3]])
    after = classifier.call("GET", "/health")[1]["batch_sizes"]
    grown = {size: count - before.get(size, 0) for size, count in after.items() if count > before.get(size, 0)}
    assert sum(grown.values()) == 8 and max(int(size) for size in grown) > 1, grown


@pytest.mark.parametrize("case, raw, status, words", [
    ("malformed JSON", b'{"inputs": [', 400, ["not valid JSON"]),
    ("not an object", b'["a"]', 422, ["JSON object"]),
    ("missing field", b'{"texts": ["a"]}', 400, ["texts"]),
    ("missing inputs", b'{}', 422, ["inputs"]),
    ("one string", b'{"inputs": "a film"}', 200, []),  # a single string is a list of one
    ("wrong type", b'{"inputs": 5}', 422, ["inputs", "int"]),
    ("wrong item type", b'{"inputs": [3]}', 422, ["inputs[0]"]),
    ("bad task field", b'{"inputs": [{"txt": "a"}]}', 400, ["text"]),
])
def test_bad_requests_get_json_errors(classifier, case, raw, status, words):
    code, answer = classifier.call("POST", "/v1/predict", raw=raw, key=API_KEY)
    assert code == status, answer
    for word in words:
        assert word in answer["error"]["message"], answer
    assert classifier.call("POST", "/v1/predict", {"inputs": ["good"]}, key=API_KEY)[0] == 200  # still up


def test_a_bad_input_fails_only_its_own_request(classifier):
    bodies = [{"inputs": [{"txt": "a"}]}, {"inputs": ["good"]}] * 3
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda body: classifier.call("POST", "/v1/predict", body, key=API_KEY), bodies))
    assert [status for status, _ in answers] == [400, 200] * 3


def test_auth_unknown_endpoint_and_oversize_body(classifier):
    assert classifier.call("POST", "/v1/predict", {"inputs": ["a"]})[0] == 401
    code, answer = classifier.call("POST", "/v1/predict", {"inputs": ["a"]}, key="wrong")
    assert code == 401 and "API key" in answer["error"]["message"]
    assert classifier.call("GET", "/v1/models")[0] == 401
    code, answer = classifier.call("POST", "/v1/nothing", {"inputs": ["a"]}, key=API_KEY)
    assert code == 404 and "error" in answer
    code, answer = classifier.call("GET", "/v1/predict", key=API_KEY)
    assert code == 405 and "error" in answer
    code, answer = classifier.call("POST", "/v1/embeddings", {"input": "a"}, key=API_KEY)
    assert code == 404  # a classification run has no embeddings endpoint
    code, answer = classifier.call("POST", "/v1/predict", {"inputs": ["a" * (5 * 1024 * 1024)]}, key=API_KEY)
    assert code == 413 and "error" in answer
    assert classifier.call("POST", "/v1/predict", {"inputs": ["good"]}, key=API_KEY)[0] == 200


def test_a_taken_port_is_a_one_line_error(classifier, classification_run):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    done = subprocess.run([sys.executable, "-m", "nlpkit.cli", "serve", str(classification_run), "--port",
                           str(classifier.port)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "cannot listen on" in done.stderr, done.stderr


def test_ner_predict_answers_as_the_python_api(ner_run):
    texts = ["Anna Smith went to Paris", "Maria saw Acme in Rome"]
    server = Server(ner_run, "--max-batch-size", "1")
    try:
        status, answer = server.call("POST", "/v1/predict", {"inputs": texts})
    finally:
        code = server.stop()
    assert status == 200, answer
    assert answer["outputs"] == json.loads(json.dumps(nlpkit.load(ner_run).predict(texts)))
    assert code == 0  # SIGTERM: a clean stop


def test_embeddings_in_openai_shape(encoder_folder):
    server = Server(encoder_folder)
    try:
        status, answer = server.call("POST", "/v1/embeddings", {"input": TEXTS[:2], "model": encoder_folder.name,
                                                                "encoding_format": "float"})
        one = server.call("POST", "/v1/embeddings", {"input": TEXTS[0], "model": encoder_folder.name})
        unsupported = server.call("POST", "/v1/embeddings", {"input": "a", "dimensions": 8})
        base64 = server.call("POST", "/v1/embeddings", {"input": TEXTS[:2], "encoding_format": "base64"})
        unknown_format = server.call("POST", "/v1/embeddings", {"input": "a", "encoding_format": "int8"})
        predict = server.call("POST", "/v1/predict", {"inputs": ["a"]})
        openai = pytest.importorskip("openai")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0)
        from_client = client.embeddings.create(model=encoder_folder.name, input=TEXTS[:2])
    finally:
        server.stop()
    assert status == 200, answer
    model = nlpkit.load(encoder_folder)
    assert [item.embedding for item in from_client.data] == [item["embedding"] for item in answer["data"]]
    assert from_client.usage.prompt_tokens == answer["usage"]["prompt_tokens"]
    expected = model.embed(TEXTS[:2])
    assert answer["object"] == "list" and answer["model"] == encoder_folder.name
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert {item["object"] for item in answer["data"]} == {"embedding"}
    assert torch.allclose(torch.tensor([item["embedding"] for item in answer["data"]]), expected, atol=1e-5)
    tokens = sum(len(e.ids) for e in model.tokenizer.encode_batch(TEXTS[:2]))
    assert answer["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert one[0] == 200 and len(one[1]["data"]) == 1
    assert unsupported[0] == 400 and unsupported[1]["error"]["param"] == "dimensions"
    assert base64[0] == 200
    decoded = [struct.unpack(f"<{len(e)}f", b64decode(item["embedding"])) for item, e in zip(base64[1]["data"], expected)]
    assert torch.allclose(torch.tensor(decoded), expected, atol=1e-5)
    assert unknown_format[0] == 400 and unknown_format[1]["error"]["param"] == "encoding_format"
    assert predict[0] == 404  # a pretrained encoder folder has no task to predict


def test_serve_without_litserve_names_the_extra(tmp_path):
    hide = ("import sys\n"
            "sys.modules['litserve'] = None  # import litserve now fails as if it were not installed\n"
            "from nlpkit.cli import main\n"
            "sys.exit(main(['serve', sys.argv[1]]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    done = subprocess.run([sys.executable, "-c", hide, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and 'pip install "nlpkit[serve]"' in lines[0], done.stderr


@pytest.mark.parametrize("verbs, flag_ms, window_ms", [
    (["predict"], None, 1.0), (["embed"], None, 1.0), (["predict", "complete", "chat"], None, 10.0),
    (["predict", "translate"], None, 10.0), (["predict", "complete"], 0.0, 0.0), (["predict"], 25.0, 25.0)])
def test_the_batch_window_is_short_unless_the_model_generates(tmp_path, verbs, flag_ms, window_ms):
    # The README's default: a generation call takes long, so its requests may wait longer to share one.
    from nlpkit.serving import ServeOptions, build_server

    server = build_server(ServeOptions(path=str(tmp_path), batch_timeout_ms=flag_ms), verbs)
    assert [api.batch_timeout for api in server.litapi_connector] == [window_ms / 1000]


def test_a_full_queue_answers_503(classifier):
    # Requests wait out the 200 ms batch timeout, so of 24 sent at once those that find the 10 places taken get
    # 503 (how many depends on when the threads' requests arrive; answered ones free their places).
    def one(_: int) -> tuple[int, Any]:
        return classifier.call("POST", "/v1/predict", {"inputs": ["good"]}, key=API_KEY)

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(24)))
    statuses = sorted(status for status, _ in answers)
    assert set(statuses) == {200, 503}, statuses
    assert all("busy" in answer["error"]["message"] for status, answer in answers if status == 503)
    assert one(0)[0] == 200


@pytest.fixture(scope="module")
def translation_run(tmp_path_factory) -> Path:
    from tests.plugins.test_translation import pairs, write_parallel

    folder = tmp_path_factory.mktemp("serve-translation")
    data = {"format": "parallel", "train": str(write_parallel(folder, "train", pairs(64, 1))),
            "validation": str(write_parallel(folder, "val", pairs(8, 2))), "options": {"target": "de"}}
    # Short greedy outputs: validation decodes up to max_new_tokens for every sentence.
    recipe = tiny_recipe("translation", data, folder / "runs", backbone_kind="encoder-decoder",
                         options={"max_new_tokens": 6, "num_beams": 1})
    return nlpkit.run(recipe).run_dir


def test_translate_and_sigterm_finishes_the_request_in_flight(translation_run):
    texts = ["the cat runs", "a big red house"]
    server = Server(translation_run, "--batch-timeout-ms", "1000")
    try:
        greedy = server.call("POST", "/v1/translate", {"inputs": texts, "max_new_tokens": 6, "num_beams": 1})
        unknown = server.call("POST", "/v1/translate", {"inputs": texts, "beams": 2})
        with ThreadPoolExecutor(1) as pool:
            # This request waits out the 1 s batch timeout; SIGTERM arrives while it is in flight.
            in_flight = pool.submit(server.call, "POST", "/v1/translate", {"inputs": texts[:1], "max_new_tokens": 6})
            time.sleep(0.4)
            server.process.send_signal(signal.SIGTERM)
            finished = in_flight.result(timeout=30)
        server.process.wait(timeout=30)
    finally:
        code = server.stop()
    model = nlpkit.load(translation_run)
    assert greedy == (200, {"outputs": model.translate(texts, max_new_tokens=6, num_beams=1)})
    assert unknown[0] == 400 and unknown[1]["error"]["param"] == "beams"
    assert finished == (200, {"outputs": model.translate(texts[:1], max_new_tokens=6)})
    assert code == 0


def test_qa_predict_answers_as_the_python_api(tmp_path):
    from tests.plugins.test_qa import qa_files, qa_rows

    recipe = tiny_recipe("qa", qa_files(tmp_path / "data"), tmp_path / "runs",
                         options={"doc_stride": 4, "max_question_length": 12})
    run_dir = nlpkit.run(recipe).run_dir
    rows = [{"question": r["question"], "context": r["context"]} for r in qa_rows(3, 12)]
    server = Server(run_dir)
    try:
        status, answer = server.call("POST", "/v1/predict", {"inputs": rows})
    finally:
        server.stop()
    assert status == 200, answer
    assert answer["outputs"] == json.loads(json.dumps(nlpkit.load(run_dir).predict(rows)))


def test_loading_a_run_imports_neither_lightning_nor_torchmetrics(classification_run, translation_run):
    # What a worker's start waits for: these imports took ~5 s of the ~7 s that loading a tiny run took.
    check = ("import sys, nlpkit\n"
             "for path in sys.argv[1:]:\n"
             "    nlpkit.load(path).predict(['a short text'])\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'pytorch_lightning', 'torchmetrics', 'datasets'}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    done = subprocess.run([sys.executable, "-c", check, str(classification_run), str(translation_run)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# -- generation: /v1/completions and /v1/chat/completions -------------------------------------------------------

PROMPTS = ["the cat sat on", "a dog ran to the big"]
CONVERSATION = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "the cat sat"}]


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory) -> Path:
    from nlpkit.testing import write_rows
    from tests.plugins.test_generation_chat import _conversations

    folder = tmp_path_factory.mktemp("serve-chat")
    rows = [{"messages": c} for c in _conversations(40)]
    data = {"format": "chat", "train": str(write_rows(folder / "train.jsonl", rows[:32])),
            "validation": str(write_rows(folder / "validation.jsonl", rows[32:]))}
    recipe = tiny_recipe("generation", data, folder / "runs", "decoder",
                         {"sample_every": 0, "packing": True, "block_size": 96})
    recipe["backbone"]["config"]["max_positions"] = 128
    recipe["tokenizer"]["max_length"] = 128
    return nlpkit.run(recipe).run_dir


@pytest.fixture(scope="module")
def generator(chat_run) -> Iterator[Server]:
    server = Server(chat_run, "--max-batch-size", "8", "--batch-timeout-ms", "150", "--api-key", API_KEY)
    yield server
    server.stop()


def _usage(generated: list[Any]) -> dict[str, int]:
    prompt = sum(g.prompt_tokens for g in generated)
    completion = sum(c.tokens for g in generated for c in g.continuations)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def test_completions_answer_as_the_python_api(generator, chat_run):
    model = nlpkit.load(chat_run)
    cases = [({"max_tokens": 8, "temperature": 0}, dict(max_new_tokens=8, do_sample=False)),
             ({"max_tokens": 8, "temperature": 0, "stop": " the"}, dict(max_new_tokens=8, stop=[" the"])),
             ({"max_tokens": 6, "temperature": 0.9, "top_p": 0.95, "seed": 5, "n": 2},
              dict(max_new_tokens=6, do_sample=True, temperature=0.9, top_p=0.95, seed=5, num_return_sequences=2))]
    for fields, options in cases:
        for prompt in PROMPTS:  # one request at a time: batches of one, the same tokens as the Python API's
            status, answer = generator.call("POST", "/v1/completions", {"model": chat_run.name, "prompt": prompt,
                                                                        **fields}, key=API_KEY)
            assert status == 200, answer
            expected = model.generate([prompt], details=True, **options)
            assert answer["object"] == "text_completion" and answer["model"] == chat_run.name
            assert [(c["index"], c["text"], c["finish_reason"]) for c in answer["choices"]] == [
                (i, c.text, c.finish_reason) for i, c in enumerate(expected[0].continuations)]
            assert answer["usage"] == _usage(expected)
            assert answer["usage"]["prompt_tokens"] == len(model.task.encode_prompts([prompt])[0])


def test_chat_completions_answer_as_the_python_api(generator, chat_run):
    model = nlpkit.load(chat_run)
    status, answer = generator.call("POST", "/v1/chat/completions", {"messages": CONVERSATION, "max_tokens": 8},
                                    key=API_KEY)
    assert status == 200, answer
    expected = model.chat(CONVERSATION, max_new_tokens=8, details=True)
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    assert answer["choices"] == [{"index": 0, "message": {"role": "assistant", "content": expected.continuations[0].text},
                                  "logprobs": None, "finish_reason": expected.continuations[0].finish_reason}]
    assert answer["choices"][0]["message"] == model.chat(CONVERSATION, max_new_tokens=8)
    # The prompt is the conversation rendered through the run's chat template, as the model saw it.
    rendered = model.task.tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert answer["usage"] == _usage([expected]) and answer["usage"]["prompt_tokens"] == len(rendered)
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "the cat "}, {"type": "text",
                                                                                             "text": "sat"}]}]}
    status, from_parts = generator.call("POST", "/v1/chat/completions", {**parts, "max_tokens": 8}, key=API_KEY)
    plain = model.chat([{"role": "user", "content": "the cat sat"}], max_new_tokens=8)
    assert status == 200 and from_parts["choices"][0]["message"] == plain


def test_streamed_answers_add_up_to_the_whole_answers(generator):
    body = {"prompt": PROMPTS, "max_tokens": 8, "temperature": 0, "stop": ["on the"]}
    whole = generator.call("POST", "/v1/completions", body, key=API_KEY)[1]
    events = generator.stream("/v1/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["usage"] == whole["usage"]
    chunks = events[:-2]
    assert {e["object"] for e in chunks} == {"text_completion"} and len({e["id"] for e in chunks}) == 1
    for choice in whole["choices"]:
        mine = [c for e in chunks for c in e["choices"] if c["index"] == choice["index"]]
        assert "".join(c["text"] for c in mine) == choice["text"]
        assert [c["finish_reason"] for c in mine] == [None] * (len(mine) - 1) + [choice["finish_reason"]]

    body = {"messages": CONVERSATION, "max_tokens": 8}
    whole = generator.call("POST", "/v1/chat/completions", body, key=API_KEY)[1]
    events = generator.stream("/v1/chat/completions", {**body, "stream": True})
    assert events[-1] == "[DONE]"
    deltas = [e["choices"][0] for e in events[:-1]]
    assert {e["object"] for e in events[:-1]} == {"chat.completion.chunk"}
    assert deltas[0]["delta"]["role"] == "assistant" and all("role" not in d["delta"] for d in deltas[1:])
    assert "".join(d["delta"].get("content", "") for d in deltas) == whole["choices"][0]["message"]["content"]
    assert deltas[-1]["finish_reason"] == whole["choices"][0]["finish_reason"]


def test_concurrent_completions_are_batched(generator, chat_run):
    prompts = ["the cat sat", "the dog ran", "a big red house", "the mat", "a dog", "the sea by the"]
    expected = nlpkit.load(chat_run).generate(prompts, max_new_tokens=6)
    before = generator.call("GET", "/health")[1]["batch_sizes"]

    def one(prompt: str) -> tuple[int, Any]:
        return generator.call("POST", "/v1/completions", {"prompt": prompt, "max_tokens": 6, "temperature": 0},
                              key=API_KEY)

    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(one, prompts))
    assert [status for status, _ in answers] == [200] * len(prompts)
    # Left padding changes nothing: batched, each prompt continues as in the Python API's batch.
    assert [answer["choices"][0]["text"] for _, answer in answers] == expected
    after = generator.call("GET", "/health")[1]["batch_sizes"]
    grown = {size: count - before.get(size, 0) for size, count in after.items() if count > before.get(size, 0)}
    assert sum(grown.values()) == len(prompts) and max(int(size) for size in grown) > 1, grown


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/completions", {"prompt": "the cat", "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "the cat", "max_tokens": "8"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "the cat", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "the cat", "presence_penalty": 0.5}, 400, "presence_penalty"),
    ("/v1/completions", {"prompt": "the cat", "n": 2, "temperature": 0}, 400, "n"),
    ("/v1/completions", {"prompt": "the cat", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": [[1, 2, 3]]}, 400, "prompt"),
    ("/v1/completions", {"max_tokens": 4}, 422, "prompt"),
    ("/v1/completions", {"prompt": "the cat", "model": "gpt-4"}, 404, "model"),
    ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 422, "messages"),
    ("/v1/chat/completions", {"messages": CONVERSATION, "tools": []}, 400, "tools"),
])
def test_bad_completion_requests_name_the_field(generator, path, body, status, param):
    code, answer = generator.call("POST", path, body, key=API_KEY)
    assert code == status and answer["error"]["param"] == param, answer
    assert generator.call("POST", "/v1/completions", {"prompt": "the", "max_tokens": 2}, key=API_KEY)[0] == 200


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_longer_than_the_context_window_is_a_json_400(generator, stream):
    code, answer = generator.call("POST", "/v1/completions", {"prompt": "the cat " * 100, "stream": stream},
                                  key=API_KEY)
    assert code == 400 and "context window of 128 tokens" in answer["error"]["message"], answer


@pytest.fixture(scope="module")
def exported_decoder(chat_run, tmp_path_factory) -> Path:
    return nlpkit.load(chat_run).export(tmp_path_factory.mktemp("serve-decoder") / "chat-decoder")


def test_the_openai_client_talks_to_a_pretrained_decoder_folder(exported_decoder):
    openai = pytest.importorskip("openai")
    server = Server(exported_decoder)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0)
        model_id = client.models.list().data[0].id
        completion = client.completions.create(model=model_id, prompt=PROMPTS[0], max_tokens=6, temperature=0)
        chat = client.chat.completions.create(model=model_id, messages=CONVERSATION, max_tokens=6)
        stream = client.chat.completions.create(model=model_id, messages=CONVERSATION, max_tokens=6, stream=True,
                                                stream_options={"include_usage": True})
        chunks = list(stream)
        with pytest.raises(openai.BadRequestError, match="presence_penalty"):
            client.completions.create(model=model_id, prompt="the", presence_penalty=1.0)
        predict = server.call("POST", "/v1/predict", {"inputs": ["a"]})
    finally:
        server.stop()
    model = nlpkit.load(exported_decoder)
    assert model_id == exported_decoder.name
    assert completion.choices[0].text == model.generate(PROMPTS[0], max_new_tokens=6, do_sample=False)
    assert completion.usage.completion_tokens <= 6 and completion.choices[0].finish_reason in ("stop", "length")
    reply = model.chat(CONVERSATION, max_new_tokens=6)
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content == reply["content"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply["content"]
    assert chunks[-1].usage.total_tokens == chat.usage.total_tokens
    assert predict[0] == 404  # a pretrained folder has no task to predict
