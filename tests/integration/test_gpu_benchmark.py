"""benchmarks/gpu.py: its CPU dry run (every part at tiny size), and on a CUDA machine its real decoder part.

The script runs as users run it, in a process of its own, and is judged by
the report it writes with ``--json`` and the table it prints.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu.py"


def _run_benchmark(tmp_path: Path, *arguments: str, timeout: int) -> tuple[str, dict[str, Any]]:
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, str(SCRIPT), *arguments, "--json", str(report),
                           "--output-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(report.read_text())


def test_the_dry_run_trains_and_times_every_part_on_the_cpu(tmp_path):
    # A stated peak of 1 TFLOP/s, since a CPU has no entry in the table: the MFU path runs too.
    stdout, report = _run_benchmark(tmp_path, "--dry-run", "--peak-tflops", "1", timeout=300)

    assert report["dry_run"] is True and report["device"] == "CPU"
    decoder = report["decoder"]
    assert decoder["measured_steps"] == 20 and decoder["warmup_steps"] == 2
    assert decoder["parameters"] > 0 and decoder["vocab_size"] > 256  # a trained BPE: bytes and merges
    assert decoder["tokens_per_second"] > 0 and decoder["tflops"] > 0
    assert 0 < decoder["mfu"] < 1
    encoder = report["encoder"]
    assert encoder["nlpkit_seconds"] > 0 and encoder["transformers_seconds"] > 0
    assert encoder["ratio"] > 0 and encoder["paired_ratio"] > 0
    # Without CUDA, DDP runs on the CPU (gloo) and FSDP, which Lightning allows on a GPU only, is skipped.
    assert report["strategies"]["ddp"]["status"] == "ok", report["strategies"]
    assert report["strategies"]["fsdp"]["status"] == "skipped"

    # The same figures in the markdown table.
    assert "| part " in stdout
    for figure in ("tokens/s", "MFU", "ratio nlpkit/transformers"):
        assert f"| {figure} " in stdout, stdout
    assert re.search(r"\| ddp +\| start +\| ok: 3 steps", stdout), stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_decoder_part_trains_a_gpt2_medium_sized_model_on_the_gpu(tmp_path):
    stdout, report = _run_benchmark(tmp_path, "--parts", "decoder", "--warmup-steps", "1", "--batch-size", "4",
                                    timeout=900)

    decoder = report["decoder"]
    assert decoder["parameters"] > 300e6  # 24 x 1024: about 302M without the token table
    assert decoder["tokens_per_second"] > 0 and decoder["tflops"] > 0
    if decoder["peak_tflops"] is not None:  # a GPU of the table: H100, H200, A100
        assert 0 < decoder["mfu"] < 1
    assert "| decoder | tokens/s" in stdout
