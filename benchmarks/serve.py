"""Serving throughput: ``nlpkit serve`` with dynamic batching against ``--max-batch-size 1``, on loopback.

Two models, each behind a real ``nlpkit serve`` process on 127.0.0.1:

- classification: an ``sst2-minilm`` run (all-MiniLM-L6-v2 fine-tuned on SST-2,
  ``tokenizer.max_length`` 64). With no ``--run``, the recipe is trained for
  ``--train-steps`` steps first: throughput does not depend on how well the
  model learned. Each request is one SST-2 dev sentence to ``/v1/predict``.
- generation: a random-weight decoder of GPT-2 small's shape (12 layers, 768
  wide, GPT-2's 1,024 positions) with a byte-level BPE tokenizer trained on
  tiny Shakespeare (its vocabulary, about as large as the text allows, is the
  model's), saved by ``transformers``. Each request is a Shakespeare line to
  ``/v1/completions`` with ``max_tokens`` ``--max-tokens``, greedy.

For each model, two servers in turn: batching on (``--max-batch-size 32``, the
default ``--batch-timeout-ms``) and off (``--max-batch-size 1``); against each, 1, 8
and 32 concurrent clients (threads with keep-alive connections), each sending
its next request when its last is answered, a bounded number of requests per
level (``--requests``, ``--gen-requests``) and at most ``--level-seconds``.
Reported: requests per second, p50 and p99 latency, and for generation the
completion tokens per second (from the answers' usage). The clients run on the
same cores as the server (2 here), so the figures are the machine's, shared.

    python benchmarks/serve.py                      # both models (about 10 minutes on 2 CPU cores)
    python benchmarks/serve.py --models classification --run runs/sst2-minilm-...
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODES = {"batching": ["--max-batch-size", "32"], "max-batch-size 1": ["--max-batch-size", "1"]}


def train_classification_run(folder: Path, steps: int) -> Path:
    import nlpkit

    recipe = ROOT / "recipes" / "classification" / "sst2-minilm.yaml"
    result = nlpkit.run(recipe, overrides=[f"training.max_steps={steps}", f"output_dir={folder}"], quiet=True)
    return result.run_dir


def make_decoder(folder: Path) -> Path:
    """A random GPT-2-small-shaped decoder and a byte-level BPE tokenizer of tiny Shakespeare, in HF layout."""
    import torch
    import transformers

    from nlpkit.tokenization import Tokenizer

    text = (SHARED / "data" / "tiny_shakespeare" / "input.txt").read_text(encoding="utf-8")
    tokenizer = Tokenizer.train(text.splitlines(), "bpe", vocab_size=50257, min_frequency=2, lowercase=False,
                                max_length=1024)
    tokenizer.save(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=768, n_layer=12, n_head=12, n_positions=1024,
                                     vocab_size=tokenizer.vocab_size, bos_token_id=None, eos_token_id=None)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


class Server:
    def __init__(self, path: Path, flags: list[str]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"),
                                                             os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen([sys.executable, "-m", "nlpkit.cli", "serve", str(path), "--port",
                                         str(self.port), "--max-queue", "1024", *flags], env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"nlpkit serve exited: {self.process.stderr.read()[-3000:]}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise SystemExit("nlpkit serve did not become ready in 180 s")

    def health(self) -> dict[str, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request("GET", "/health")
        return json.loads(connection.getresponse().read())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def load_level(port: int, path: str, bodies: list[dict], clients: int, seconds: float) -> dict[str, float]:
    """``clients`` threads send ``bodies`` (each taken once, in turn) until all are answered or time is up."""
    lock = threading.Lock()
    next_body = [0]
    latencies: list[float] = []
    tokens = [0]
    failures = [0]
    stop_at = time.monotonic() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        while True:
            with lock:
                if next_body[0] >= len(bodies) or time.monotonic() > stop_at:
                    return
                body = bodies[next_body[0]]
                next_body[0] += 1
            start = time.perf_counter()
            connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            took = time.perf_counter() - start
            with lock:
                if response.status != 200:
                    failures[0] += 1
                    continue
                latencies.append(took)
                tokens[0] += answer.get("usage", {}).get("completion_tokens", 0)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    latencies.sort()
    return {"requests": len(latencies), "failed": failures[0], "wall_s": wall, "rps": len(latencies) / wall,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "tokens_per_s": tokens[0] / wall}


def measure(model: str, path: Path, bodies: list[dict], endpoint: str, levels: list[int], seconds: float,
            warmup: int, extra_flags: list[str]) -> list[dict[str, Any]]:
    rows = []
    for mode, flags in MODES.items():
        server = Server(path, flags + extra_flags)
        try:
            load_level(server.port, endpoint, bodies[:warmup], min(warmup, 8), seconds)  # warm-up, not reported
            before = server.health()["batch_sizes"]
            for clients in levels:
                figures = load_level(server.port, endpoint, bodies, clients, seconds)
                rows.append({"model": model, "mode": mode, "clients": clients, **figures})
                print(json.dumps(rows[-1]), flush=True)
            after = server.health()["batch_sizes"]
            sizes = {int(k): v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
            print(f"# {model}, {mode}: requests served per batch size {dict(sorted(sizes.items()))}", flush=True)
        finally:
            server.stop()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | clients | mode | requests | req/s | p50 ms | p99 ms | tokens/s | batching / bs 1 (req/s) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        other = next(r for r in rows if r["model"] == row["model"] and r["clients"] == row["clients"]
                     and r["mode"] != row["mode"])
        ratio = f"**{row['rps'] / other['rps']:.2f}x**" if row["mode"] == "batching" else ""
        tokens = f"{row['tokens_per_s']:.1f}" if row["tokens_per_s"] else ""
        lines.append(f"| {row['model']} | {row['clients']} | {row['mode']} | {row['requests']} | {row['rps']:.1f} | "
                     f"{row['p50_ms']:.0f} | {row['p99_ms']:.0f} | {tokens} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="classification,generation")
    parser.add_argument("--run", help="an sst2-minilm run folder (default: train one for --train-steps steps)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--requests", type=int, default=384, help="classification requests per level")
    parser.add_argument("--gen-requests", type=int, default=32, help="generation requests per level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--level-seconds", type=float, default=60.0)
    parser.add_argument("--dtype", help="the servers' --dtype (both modes), e.g. bfloat16; default float32")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    models = args.models.split(",")
    extra_flags = ["--dtype", args.dtype] if args.dtype else []
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        if "classification" in models:
            run = Path(args.run) if args.run else train_classification_run(Path(tmp) / "runs", args.train_steps)
            sentences = [line.split("\t")[0] for line in
                         (SHARED / "data" / "sst2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]]
            bodies = [{"inputs": [sentences[i % len(sentences)]]} for i in range(args.requests)]
            rows += measure("sst2-minilm", run, bodies, "/v1/predict", levels, args.level_seconds, warmup=16,
                            extra_flags=extra_flags)
        if "generation" in models:
            folder = make_decoder(Path(tmp) / "gpt2-random")
            lines = [line for line in (SHARED / "data" / "tiny_shakespeare" / "input.txt").read_text(
                encoding="utf-8").splitlines() if len(line) > 30]
            bodies = [{"prompt": lines[i % len(lines)], "max_tokens": args.max_tokens, "temperature": 0}
                      for i in range(args.gen_requests)]
            rows += measure("gpt2-size decoder", folder, bodies, "/v1/completions", levels, args.level_seconds,
                            warmup=4, extra_flags=extra_flags)
    print(table(rows))


if __name__ == "__main__":
    main()
