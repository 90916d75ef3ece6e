"""One fine-tuning epoch end to end: `nlpkit run` versus the `transformers` Trainer.

Same data (SST-2 train, scored on dev), same model (a pretrained folder, by
default ../shared/models/all-minilm-l6-v2), same number of examples, batch 32,
learning rate 5e-5 with linear decay, one epoch, the same precision. Each side
runs in its own process, one after the other (`--order` alternates them across
repeats); the script reports each side's training wall time, dev accuracy and
peak resident memory, and the ratio of the training times.

The ratio compares the whole job on each side, from reading the data to the
dev accuracy: loading, tokenising, one training epoch and the evaluation (for
nlpkit also writing its run folder). Each side's training loop (nlpkit:
Lightning's `Trainer.fit`, its epoch-end validation included; the Trainer:
its own `train_runtime`) is printed beside it, and the time outside it: the
job's fixed cost.

Batching: `--grouping both` (the default) has both sides group batches by
length, nlpkit's recipe (`data.group_by_length: true`) and the Trainer with
`train_sampling_strategy="group_by_length"` (transformers 5's name for the
same batching), so that the ratio measures the engines at equal settings;
`--grouping neither` turns it off on both sides, `--grouping defaults` keeps
each side's default (nlpkit's recipe groups, the Trainer does not).

Run from the repository root (needs `transformers`, the `test` extra; about
15 to 25 minutes per side on 2 CPU cores):

    python benchmarks/finetune_epoch.py --precision bf16
    python benchmarks/finetune_epoch.py --precision bf16 --max-examples 8000 --grouping both
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_MODEL = SHARED / "models" / "all-minilm-l6-v2"
DEFAULT_DATA = SHARED / "data" / "sst2"


def run_nlpkit(args: argparse.Namespace, out: Path) -> dict:
    import csv

    import nlpkit

    train = Path(args.data) / "train.tsv"
    if args.max_examples:
        rows = list(csv.reader(train.open(encoding="utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))
        train = out / "train.tsv"
        with train.open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\").writerows(rows[: args.max_examples + 1])
    precision = "bf16-mixed" if args.precision == "bf16" else "32-true"
    grouping = [] if args.grouping == "defaults" else [f"data.group_by_length={str(args.grouping == 'both').lower()}"]
    fit_seconds = _timed_fit()
    start = time.perf_counter()
    result = nlpkit.run(REPO / "recipes" / "classification" / "sst2-minilm.yaml", overrides=[
        f"backbone.pretrained={args.model}", f"data.train={train}", f"data.validation={Path(args.data) / 'dev.tsv'}",
        f"training.precision={precision}", "training.batch_size=32", "optimization.lr=5e-5", "training.epochs=1",
        f"output_dir={out}", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *grouping,
    ])
    return {"accuracy": result.metrics["val_accuracy"], "train_s": sum(fit_seconds),
            "process_s": time.perf_counter() - start}


def _timed_fit() -> list[float]:
    """Times Lightning's `Trainer.fit` (nlpkit's training loop) in this process; the list fills as it runs."""
    import pytorch_lightning as pl

    seconds: list[float] = []
    fit = pl.Trainer.fit

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fit(self, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    pl.Trainer.fit = timed
    return seconds


def run_transformers(args: argparse.Namespace, out: Path) -> dict:
    import datasets
    import numpy as np
    import transformers

    start = time.perf_counter()
    data = datasets.load_dataset("csv", delimiter="\t", quoting=3, data_files={
        "train": str(Path(args.data) / "train.tsv"), "validation": str(Path(args.data) / "dev.tsv")})
    if args.max_examples:
        data["train"] = data["train"].select(range(args.max_examples))
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    data = data.map(lambda b: tokenizer(b["sentence"], truncation=True, max_length=64), batched=True)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    training_args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=5e-5,
        num_train_epochs=1, warmup_steps=int(0.06 * -(-len(data["train"]) // 32)), weight_decay=0.01, bf16=args.precision == "bf16",
        use_cpu=True, report_to=[], save_strategy="no", logging_steps=100, seed=42,
        train_sampling_strategy="group_by_length" if args.grouping == "both" else "random",
    )
    trainer = transformers.Trainer(
        model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["validation"],
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda p: {"accuracy": float((np.argmax(p.predictions, -1) == p.label_ids).mean())},
    )
    trained = trainer.train()
    accuracy = trainer.evaluate()["eval_accuracy"]
    return {"accuracy": accuracy, "train_s": trained.metrics["train_runtime"], "process_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--max-examples", type=int, default=0, help="train on the first N rows only (0: all)")
    parser.add_argument("--grouping", choices=["both", "neither", "defaults"], default="both",
                        help="batches grouped by length on both sides (equal settings), neither, or each default")
    parser.add_argument("--side", choices=["nlpkit", "transformers"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        with tempfile.TemporaryDirectory() as tmp:
            result = (run_nlpkit if args.side == "nlpkit" else run_transformers)(args, Path(tmp))
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result))
        return
    results = {}
    for side in ("nlpkit", "transformers"):
        command = [sys.executable, __file__, "--side", side, "--model", args.model, "--data", args.data,
                   "--precision", args.precision, "--max-examples", str(args.max_examples), "--grouping", args.grouping]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[side] = json.loads(next(line for line in output.splitlines() if line.startswith("RESULT "))[7:])
        print(side, results[side], flush=True)
    ratio = results["nlpkit"]["process_s"] / results["transformers"]["process_s"]
    for side, result in results.items():
        print(f"{side}: whole job {result['process_s']:.1f} s, training loop {result['train_s']:.1f} s, "
              f"outside it {result['process_s'] - result['train_s']:.1f} s")
    print(f"process wall time ratio nlpkit / transformers ({args.precision}, grouping {args.grouping}): {ratio:.2f}; "
          f"dev accuracy {results['nlpkit']['accuracy']:.3f} vs {results['transformers']['accuracy']:.3f}")


if __name__ == "__main__":
    main()
