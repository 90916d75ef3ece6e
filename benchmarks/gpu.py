"""GPU benchmark: decoder pre-training throughput and MFU, an encoder step against `transformers`, DDP and FSDP.

One script for a CUDA machine, in three parts (`--parts`, all by default):

1. `decoder`: a decoder of GPT-2-medium's shape (24 layers x 1024, 16 heads,
   feed-forward 4096, learned positions, LayerNorm, tanh-GELU, tied head;
   sequence 1024) trained from scratch through `nlpkit run` (the Python API
   `nlpkit.run`, the generation task) in `bf16-mixed`, batch `--batch-size`
   (16) x 1024 tokens, for `--warmup-steps` (10) steps plus 20 measured ones.
   The vocabulary is the tokenizer's (nlpkit sizes the embedding to it):
   byte-level BPE trained on the corpus with GPT-2's 50257 asked and every
   pair merged (`min_frequency` 1). Tiny Shakespeare runs out of merges at
   about 20,300 tokens, so the model there has about 323M parameters, not
   GPT-2 medium's 354M; a larger `--data` reaches 50257. The report gives the
   vocabulary and N that the figures use. No dropout: it adds no model FLOPs
   and MFU figures are customarily measured without it.

   Tokens/s is what nlpkit itself logs: `train_tokens_per_second` in the run
   folder's `metrics.csv` (`nlpkit.training.console.Throughput`: the tokens of
   the last 20 training batches over their time, each batch timed from the
   end of the one before, with a CUDA synchronise). 20 is that callback's
   window, so the rate logged at the last step covers exactly the measured
   steps and none of the warm-up ones.

   MFU (model FLOPs utilisation, PaLM's appendix B, as nanoGPT computes it)::

       flops per token = 6 * N + 12 * L * d * T
       MFU             = tokens/s * flops per token / peak bf16 FLOP/s

   N: the model's parameters, the token table counted once (it is also the
   LM head's matrix) and the position table left out (a lookup, no
   products); L layers, d width, T the sequence length (the attention's
   score and value products, forward and backward). Peak: dense bf16 of the
   GPU by its name, H100 and H200 989 TFLOP/s, A100 312; another GPU needs
   `--peak-tflops` (which also overrides the table). Without a peak the MFU
   is not reported.

2. `encoder`: one training step of the modules alone, nlpkit's Encoder with
   the classification head against `transformers.BertForSequenceClassification`,
   BERT-base shape, batch 32 x 128, bf16 autocast on the GPU, both built by
   `benchmarks/encoder_train_step.py` (its `run_timing_child`, steps of the
   two sides alternating in this process); reports the median step per side
   and the ratio nlpkit / transformers (below 1: nlpkit is faster).

3. `strategies`: DDP and FSDP start: a tiny 3-step decoder run through
   `nlpkit.run` with `trainer.strategy` ddp, then fsdp, on every visible GPU
   (`trainer.devices` = the CUDA device count), each in a process of its own
   (Lightning starts the other ranks by running that process's command
   again). Reports ok, or failed with the error's one line, per strategy.

The corpus (`--data`): a plain text file. By default
`../shared/data/tiny_shakespeare/input.txt` beside the repository if there,
else `.whl/tiny_shakespeare.txt` (`benchmarks/gpu_wheels.sh` copies it there,
since the GPU machine gets the working tree alone and `.whl/` travels with
it), else a corpus this script writes: pseudo-English paragraphs drawn from a
seeded Zipf-distributed lexicon (the throughput depends on the block size, not
on what the text says). The report says which corpus was used.

Packages: the GPU machine has no network and no `datasets`. Where `datasets`
cannot be imported and `.whl/` holds wheels (`bash benchmarks/gpu_wheels.sh`
downloads them where pip reaches PyPI), the script first installs them with
`python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl`
and puts /tmp/site on its path. nlpkit itself is used from the working tree
(the repository root and `plugins/` go on the path; nothing is installed).

Run from the repository root. Every part is bounded (30 decoder steps, 25
encoder steps a side, two 3-step runs) so that the whole run stays well inside
10 minutes; it has not yet been timed on a GPU::

    bash benchmarks/gpu_wheels.sh                    # here, with network: .whl/
    python3 benchmarks/gpu.py --json gpu.json        # there, carrying .whl

    python benchmarks/gpu.py --dry-run               # every part at tiny size on the CPU, ~25 s

`--dry-run` runs the same path at tiny size on the CPU (a 2-layer decoder of
width 64 on 64-token blocks, the encoder benchmark's `small` size at batch 4,
the first 100,000 characters of the corpus); without CUDA the strategies run
on the CPU with the gloo backend, one process, DDP only (Lightning refuses
FSDP on the CPU: reported as skipped). It prints the same report.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED_CORPUS = REPO.parent / "shared" / "data" / "tiny_shakespeare" / "input.txt"
CARRIED = REPO / ".whl"  # wheels and the corpus copy that travel with the working tree (benchmarks/gpu_wheels.sh)
CARRIED_CORPUS = CARRIED / "tiny_shakespeare.txt"
SITE = Path("/tmp/site")

# Dense bf16 peak of a GPU, by a name torch.cuda.get_device_name may contain (NVIDIA's data sheets, SXM).
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}

GPT2_VOCAB = 50257
# GPT-2 medium (n_layer 24, n_embd 1024, n_head 16, n_inner 4 * n_embd, n_positions 1024) in nlpkit's fields.
GPT2_MEDIUM = dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096, max_positions=1024)
TINY_DECODER = dict(num_layers=2, hidden_size=64, num_heads=2, intermediate_size=256, max_positions=64)
GPT2_FAMILY = dict(position_embedding="learned", norm="layernorm", norm_eps=1e-5, norm_position="pre",
                   final_norm=True, activation="gelu_tanh", tie_word_embeddings=True,
                   dropout=0.0, attention_dropout=0.0)
DRY_RUN_CHARS = 100_000
STRATEGIES = ("ddp", "fsdp")
STRATEGY_STEPS = 3
STRATEGY_TIMEOUT_S = 300
RESULT_MARK = "GPU-BENCHMARK-RESULT "  # a strategy process's answer: relaunched ranks share its stdout


# ---------------------------------------------------------------------------
# Set-up: nlpkit from the working tree, carried wheels, the corpus
# ---------------------------------------------------------------------------


def _prepend_path(*folders: Path) -> None:
    """Put `folders` first on this process's import path and on its children's (PYTHONPATH)."""
    for folder in reversed(folders):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    inherited = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join([*(str(f) for f in folders), *(p for p in inherited
                                                                              if p not in map(str, folders))])
    importlib.invalidate_caches()


def install_carried_wheels() -> list[str]:
    """Install `.whl/*.whl` into /tmp/site when `datasets` is missing; returns the wheels installed."""
    if importlib.util.find_spec("datasets") is not None:
        return []
    wheels = sorted(CARRIED.glob("*.whl"))
    if not wheels:
        raise SystemExit("gpu.py: `datasets` is not installed and .whl/ holds no wheels; run "
                         "`bash benchmarks/gpu_wheels.sh` where pip reaches PyPI and carry .whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)], check=True)
    _prepend_path(SITE)
    return [w.name for w in wheels]


def synthesise_corpus(path: Path, characters: int, seed: int = 0) -> Path:
    """Write pseudo-English paragraphs: words of a seeded syllable lexicon, drawn with Zipf frequencies."""
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
    lexicon = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(20_000)})
    rng.shuffle(lexicon)
    cumulative = list(itertools.accumulate(1.0 / rank for rank in range(1, len(lexicon) + 1)))  # Zipf
    paragraphs, written = [], 0
    while written < characters:
        lines = []
        for _ in range(rng.randint(1, 6)):
            words = rng.choices(lexicon, cum_weights=cumulative, k=rng.randint(4, 14))
            lines.append(" ".join(words).capitalize() + rng.choice([".", ",", ";", "?", "!"]))
        paragraph = "\n".join(lines)
        paragraphs.append(paragraph)
        written += len(paragraph) + 2
    path.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return path


def resolve_corpus(data: str | None, work: Path, dry_run: bool) -> tuple[Path, str]:
    """The text file to train on, and how the report names it (see the module docstring)."""
    if data is not None:
        source = Path(data)
        if not source.is_file():
            raise SystemExit(f"gpu.py: --data {data}: no such file")
        name = str(source)
    elif SHARED_CORPUS.is_file():
        source, name = SHARED_CORPUS, str(SHARED_CORPUS)
    elif CARRIED_CORPUS.is_file():
        source, name = CARRIED_CORPUS, str(CARRIED_CORPUS.relative_to(REPO))
    else:
        size = DRY_RUN_CHARS if dry_run else 2_000_000
        return synthesise_corpus(work / "synthetic.txt", size), f"synthetic ({size:,} characters, seed 0)"
    if not dry_run:
        return source, name
    text = source.read_text(encoding="utf-8")[:DRY_RUN_CHARS]
    shortened = work / "corpus.txt"
    shortened.write_text(text, encoding="utf-8")
    return shortened, f"{name} (first {len(text):,} characters)"


def release_device_memory() -> None:
    """Free what the last part left on the GPU (Lightning's objects hold cycles), so the next part starts clean."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------
# The decoder through nlpkit run
# ---------------------------------------------------------------------------


def decoder_recipe(corpus: Path, output_dir: Path, shape: dict[str, int], block_size: int, vocab_size: int,
                   batch_size: int, steps: int, accelerator: str) -> dict[str, Any]:
    """A generation recipe that trains a GPT-2-family decoder from scratch for `steps` steps, validating once at the end."""
    return {
        "task": "generation",
        "name": "gpu-decoder",
        "backbone": {"kind": "decoder", "config": {**shape, **GPT2_FAMILY}},
        "tokenizer": {"train": "bpe", "vocab_size": vocab_size, "min_frequency": 1, "lowercase": False,
                      "max_length": block_size},
        "data": {"format": "text", "train": str(corpus), "validation_split": 0.05},
        # No samples: generating text after the validation would only lengthen the run.
        "generation": {"block_size": block_size, "sample_every": 0},
        "optimization": {"lr": 3e-4, "weight_decay": 0.1, "betas": [0.9, 0.95], "schedule": "cosine",
                         "warmup_steps": 2, "grad_clip": 1.0},
        "training": {"batch_size": batch_size, "epochs": 1000, "max_steps": steps, "precision": "bf16-mixed",
                     "seed": 0, "log_every_n_steps": 1,
                     # A checkpoint only where Lightning's best one and the epoch ends write it: not mid-measurement.
                     "checkpoint_every_n_steps": 10**6},
        # One validation, after the last step (counted across epochs), on two batches: the rate is a training figure.
        "trainer": {"accelerator": accelerator, "devices": 1, "val_check_interval": steps,
                    "check_val_every_n_epoch": None, "limit_val_batches": 2, "num_sanity_val_steps": 0,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "output_dir": str(output_dir),
        "report": False,
    }


def model_flops_per_token(backbone_config: dict[str, Any], block_size: int) -> tuple[int, float]:
    """N (parameters, token table once, no position table) and 6 N + 12 L d T, of the run's backbone config."""
    import torch

    from nlpkit.backbones import BackboneConfig, build_backbone

    config = BackboneConfig.from_dict(backbone_config)
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        backbone = build_backbone(config)
    parameters = sum(p.numel() for p in backbone.parameters())  # parameters() yields a tied tensor once
    positions = sum(p.numel() for name, p in backbone.named_parameters() if re.search(r"(^|\.)position\.", name))
    n = parameters - positions
    return n, 6.0 * n + 12.0 * config.num_layers * config.hidden_size * block_size


def last_logged_rate(metrics_csv: Path) -> tuple[int, float]:
    """The step and `train_tokens_per_second` of the last training row of a run's metrics.csv."""
    from nlpkit.training.console import TOKENS_PER_SECOND

    with metrics_csv.open(newline="", encoding="utf-8") as file:
        rows = [row for row in csv.DictReader(file) if row.get(TOKENS_PER_SECOND)]
    if not rows:
        raise RuntimeError(f"{metrics_csv}: no {TOKENS_PER_SECOND} logged")
    return int(rows[-1]["step"]), float(rows[-1][TOKENS_PER_SECOND])


def run_decoder(options: argparse.Namespace, corpus: Path, work: Path, device: dict[str, Any]) -> dict[str, Any]:
    import nlpkit
    from nlpkit.training.console import Throughput

    measured = Throughput().window.maxlen or 0  # the rate's window: the last `measured` batches
    steps = options.warmup_steps + measured
    shape, block = (TINY_DECODER, 64) if options.dry_run else (GPT2_MEDIUM, 1024)
    batch_size = 4 if options.dry_run else options.batch_size
    vocab = 500 if options.dry_run else GPT2_VOCAB
    recipe = decoder_recipe(corpus, work / "runs", shape, block, vocab, batch_size, steps,
                            "gpu" if device["cuda"] else "cpu")
    started = time.perf_counter()
    result = nlpkit.run(recipe, plugins=["nlpkit_generation"], quiet=True)
    seconds = time.perf_counter() - started
    step, tokens_per_second = last_logged_rate(result.run_dir / "metrics.csv")
    backbone = json.loads((result.run_dir / "backbone.json").read_text())
    n, flops_per_token = model_flops_per_token(backbone, block)
    peak = device["peak_tflops"]
    mfu = tokens_per_second * flops_per_token / (peak * 1e12) if peak else None
    return {
        "shape": f"{shape['num_layers']} x {shape['hidden_size']}, {shape['num_heads']} heads, "
                 f"vocab {backbone['vocab_size']}",
        "parameters": n, "vocab_size": backbone["vocab_size"], "batch": f"{batch_size} x {block}",
        "warmup_steps": options.warmup_steps, "measured_steps": measured, "last_logged_step": step,
        "tokens_per_second": tokens_per_second, "flops_per_token": flops_per_token,
        "tflops": tokens_per_second * flops_per_token / 1e12, "peak_tflops": peak, "mfu": mfu,
        "val_loss": result.metrics.get("val_loss"), "run_seconds": seconds,
    }


# ---------------------------------------------------------------------------
# The encoder step against transformers (benchmarks/encoder_train_step.py)
# ---------------------------------------------------------------------------


def run_encoder(options: argparse.Namespace, device: dict[str, Any]) -> dict[str, Any]:
    import encoder_train_step

    size, batch_size = ("small", 4) if options.dry_run else ("base", 32)
    steps, warmup = (2, 1) if options.dry_run else (20, 5)
    timed = encoder_train_step.run_timing_child(size, "bf16", steps, warmup, "trainer", None, False,
                                                device=device["torch_device"], batch_size=batch_size)
    times = timed["times"]
    medians = {side: statistics.median(times[side]) for side in encoder_train_step.SIDES}
    # Steps i of both sides ran back to back: their ratio is the least disturbed figure.
    paired = statistics.median(a / b for a, b in zip(times["nlpkit"], times["transformers"]))
    return {
        "size": size, "batch": f"{batch_size} x {encoder_train_step.LENGTH}", "precision": "bf16 autocast",
        "steps": steps, "warmup_steps": warmup, "nlpkit_seconds": medians["nlpkit"],
        "transformers_seconds": medians["transformers"], "ratio": medians["nlpkit"] / medians["transformers"],
        "paired_ratio": paired, "optimizers": timed["optimizer"], "parameters": timed["params"],
    }


# ---------------------------------------------------------------------------
# DDP and FSDP: does a run start and train?
# ---------------------------------------------------------------------------


def strategy_process(options: argparse.Namespace) -> None:
    """One strategy's tiny run (in a process of its own); rank 0 prints the answer after RESULT_MARK."""
    import nlpkit
    import torch

    cuda = options.accelerator == "gpu"
    recipe = decoder_recipe(Path(options.data), Path(options.output_dir), TINY_DECODER, 64, 500, 4,
                            STRATEGY_STEPS, "gpu" if cuda else "cpu")
    recipe["trainer"].update(strategy=options.strategy_process, devices=torch.cuda.device_count() if cuda else 1)
    try:
        result = nlpkit.run(recipe, plugins=["nlpkit_generation"], quiet=True)
    except Exception as error:  # the one line the report gives; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        first = " ".join(str(error).split())[:300]
        print(RESULT_MARK + json.dumps({"status": "failed", "detail": f"{type(error).__name__}: {first}"}), flush=True)
        return
    if not result.primary:
        return
    with (result.run_dir / "metrics.csv").open(newline="", encoding="utf-8") as file:
        trained = sum(1 for row in csv.DictReader(file) if row.get("train_loss"))
    devices = recipe["trainer"]["devices"]
    detail = f"{trained} steps on {devices} {'GPU' if cuda else 'CPU process'}{'s' if devices > 1 else ''}"
    status = "ok" if trained == STRATEGY_STEPS else "failed"
    print(RESULT_MARK + json.dumps({"status": status, "detail": detail}), flush=True)


def run_strategies(options: argparse.Namespace, corpus: Path, work: Path, device: dict[str, Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for strategy in STRATEGIES:
        if not device["cuda"] and strategy != "ddp":
            # Lightning refuses FSDP without a GPU accelerator ("The strategy `fsdp` requires a GPU accelerator").
            results[strategy] = {"status": "skipped", "detail": "no CUDA (Lightning's FSDP needs a GPU)"}
            continue
        # Without NLPKIT_RUN_DIR: the process starts a run folder of its own rather than join the decoder's.
        env = {k: v for k, v in os.environ.items() if k != "NLPKIT_RUN_DIR"}
        command = [sys.executable, os.path.abspath(__file__), "--strategy-process", strategy, "--data", str(corpus),
                   "--output-dir", str(work / f"runs-{strategy}"), "--accelerator", "gpu" if device["cuda"] else "cpu"]
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=STRATEGY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            results[strategy] = {"status": "failed", "detail": f"no answer within {STRATEGY_TIMEOUT_S} s"}
            continue
        answers = [line[len(RESULT_MARK):] for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
        if answers:
            results[strategy] = json.loads(answers[-1])
        else:
            last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            results[strategy] = {"status": "failed", "detail": last[:300]}
        if results[strategy]["status"] != "ok":
            sys.stderr.write(f"--- {strategy} process, stderr (end):\n{done.stderr[-3000:]}\n")
        if not device["cuda"]:
            results[strategy]["detail"] += " (no CUDA: gloo backend on the CPU)"
    return results


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def describe_device(peak_flag: float | None, cpu_only: bool) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available() and not cpu_only
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    peak = peak_flag
    if peak is None and cuda:
        peak = next((tflops for key, tflops in PEAK_BF16_TFLOPS.items() if key in name), None)
    return {"cuda": cuda, "name": name, "count": torch.cuda.device_count() if cuda else 0,
            "torch_device": "cuda" if cuda else "cpu", "peak_tflops": peak, "torch": torch.__version__}


def report_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    decoder, encoder, strategies = report.get("decoder"), report.get("encoder"), report.get("strategies")
    if decoder:
        rows += [
            ("decoder", "model", f"{decoder['shape']}, {decoder['parameters'] / 1e6:.1f}M parameters"),
            ("decoder", "batch, steps", f"{decoder['batch']} bf16-mixed, {decoder['warmup_steps']} warm-up + "
                                        f"{decoder['measured_steps']} measured"),
            ("decoder", "tokens/s", f"{decoder['tokens_per_second']:,.0f}"),
            ("decoder", "model TFLOP/s", f"{decoder['tflops']:.4g}"),
            ("decoder", "MFU", f"{100 * decoder['mfu']:.2f}% of {decoder['peak_tflops']:g} TFLOP/s"
             if decoder["mfu"] is not None else "- (no peak for this device: --peak-tflops)"),
        ]
    if encoder:
        rows += [
            ("encoder", "shape", f"{encoder['size']}, batch {encoder['batch']}, {encoder['precision']}"),
            ("encoder", "nlpkit s/step", f"{encoder['nlpkit_seconds']:.4f}"),
            ("encoder", "transformers s/step", f"{encoder['transformers_seconds']:.4f}"),
            ("encoder", "ratio nlpkit/transformers", f"{encoder['ratio']:.3f} (paired {encoder['paired_ratio']:.3f})"),
        ]
    for strategy, outcome in (strategies or {}).items():
        rows.append((strategy, "start", f"{outcome['status']}: {outcome['detail']}"))
    return rows


def markdown_table(rows: list[tuple[str, str, str]]) -> str:
    heading = ("part", "figure", "value")
    widths = [max(len(row[i]) for row in [heading, *rows]) for i in range(3)]
    lines = ["| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |" for row in [heading, *rows]]
    lines.insert(1, "| " + " | ".join("-" * width for width in widths) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every part at tiny size on the CPU")
    parser.add_argument("--data", help="a plain text file to train on (default: see the docstring)")
    parser.add_argument("--parts", default="decoder,encoder,strategies", help="comma-separated parts to run")
    parser.add_argument("--batch-size", type=int, default=16, help="decoder sequences of 1024 tokens a step")
    parser.add_argument("--warmup-steps", type=int, help="decoder steps before the 20 measured ones (10; dry run 2)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: by GPU name)")
    parser.add_argument("--json", help="also write the report to this file as JSON")
    parser.add_argument("--output-dir", help="where the run folders go (default: a temporary folder, removed)")
    parser.add_argument("--strategy-process", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="gpu", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    parts = options.parts.split(",")
    for part in parts:
        if part not in ("decoder", "encoder", "strategies"):
            parser.error(f"unknown part {part!r}; known: decoder, encoder, strategies")
    if options.warmup_steps is None:
        options.warmup_steps = 2 if options.dry_run else 10
    if options.warmup_steps < 0 or options.batch_size < 1:
        parser.error("--warmup-steps must be >= 0 and --batch-size >= 1")
    if options.dry_run:
        # One thread (this process and the strategy process it starts): on a busy 2-core machine torch's
        # threads wait for each other at every parallel region and a tiny step takes ten times as long.
        os.environ["OMP_NUM_THREADS"] = "1"

    _prepend_path(REPO, REPO / "plugins")
    installed = install_carried_wheels()
    if options.strategy_process:
        strategy_process(options)
        return 0

    started = time.perf_counter()
    work = Path(options.output_dir) if options.output_dir else Path(tempfile.mkdtemp(prefix="nlpkit-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        device = describe_device(options.peak_tflops, cpu_only=options.dry_run)
        if not options.dry_run and not device["cuda"]:
            raise SystemExit("gpu.py: no CUDA device; --dry-run runs the same path on the CPU")
        corpus, corpus_name = resolve_corpus(options.data, work, options.dry_run)
        report: dict[str, Any] = {"dry_run": options.dry_run, "device": device["name"], "devices": device["count"],
                                  "torch": device["torch"], "corpus": corpus_name, "wheels_installed": installed}
        print(f"device: {device['name']} (torch {device['torch']}); corpus: {corpus_name}", flush=True)
        if "decoder" in parts:
            report["decoder"] = run_decoder(options, corpus, work, device)
            release_device_memory()
        if "encoder" in parts:
            report["encoder"] = run_encoder(options, device)
        if "strategies" in parts:
            report["strategies"] = run_strategies(options, corpus, work, device)
    finally:
        if not options.output_dir:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = time.perf_counter() - started
    print("\n" + markdown_table(report_rows(report)) + f"\n\n({report['seconds']:.0f} s in all)", flush=True)
    if options.json:
        Path(options.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
