"""``nlpkit serve`` as a user runs it: the real server in a subprocess, spoken to over HTTP on 127.0.0.1.

One server per model (module-scoped): a tiny classification run, a tiny NER
run, a tiny pretrained BERT folder for embeddings. Every answer is compared
with the Python API's answer to the same inputs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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
        base64 = server.call("POST", "/v1/embeddings", {"input": "a", "encoding_format": "base64"})
        predict = server.call("POST", "/v1/predict", {"inputs": ["a"]})
    finally:
        server.stop()
    assert status == 200, answer
    model = nlpkit.load(encoder_folder)
    expected = model.embed(TEXTS[:2])
    assert answer["object"] == "list" and answer["model"] == encoder_folder.name
    assert [item["index"] for item in answer["data"]] == [0, 1]
    assert {item["object"] for item in answer["data"]} == {"embedding"}
    assert torch.allclose(torch.tensor([item["embedding"] for item in answer["data"]]), expected, atol=1e-5)
    tokens = sum(len(e.ids) for e in model.tokenizer.encode_batch(TEXTS[:2]))
    assert answer["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert one[0] == 200 and len(one[1]["data"]) == 1
    assert unsupported[0] == 400 and unsupported[1]["error"]["param"] == "dimensions"
    assert base64[0] == 400 and base64[1]["error"]["param"] == "encoding_format"
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
