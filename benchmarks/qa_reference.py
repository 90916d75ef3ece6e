"""The reference run for recipes/qa/squad-minilm.yaml: SQuAD fine-tuning with the `transformers` Trainer.

The same checkpoint (by default ../shared/models/all-minilm-l6-v2), the same
split of ../shared/data/squad/dev.json (train on articles 0:20, 4,913
questions; validate on articles 20:24, 783 questions), the same settings as
nlpkit's recipe, and the same metric (torchmetrics' `SQuAD`: exact match and
F1 on 0-100, each prediction scored against its best-matching reference
answer). It imports nothing from nlpkit.

- Model: `AutoModelForQuestionAnswering` (a start and an end logit a token).
- Windows: question first, then as much of the context as fits in
  `--max-length` (256) tokens; a longer context gives several windows that
  share `--doc-stride` (64) context tokens (the tokenizer's `stride`,
  `truncation="only_second"`, `return_overflowing_tokens`).
- Training labels, as transformers' `run_qa.py` does: the answer's first and
  last token in each window, or the [CLS] token (0) for both when the answer is
  not wholly inside the window. A dev question has several reference answers;
  training uses the first, as SQuAD's train split has only one.
- Predictions, as `run_qa.py` does: for each question, over all its windows,
  the `--n-best` (20) highest start and end logits; of the pairs with both
  tokens in the context, end >= start and at most `--max-answer-length` (30)
  tokens, the one with the highest start + end logit, mapped back to the
  context's characters through the tokenizer's offsets.
- Training: AdamW (the Trainer's default), lr 1e-4, weight decay 0.01, linear
  warmup over the first 10% of steps then linear decay, batch 16 (eval 64),
  2 epochs, bf16 autocast on the CPU (`bf16=True, use_cpu=True`), windows of
  similar length batched together (`train_sampling_strategy="group_by_length"`,
  transformers 5's `group_by_length=True`) and padded per batch
  (`DataCollatorWithPadding`), seed 0.

Checks printed with the result (`checks`): on the validation windows that hold
a reference answer whole, whether its token span decoded through the offsets
gives back exactly the answer's text (`offset_mismatches` should be 0), and the
score of an oracle that puts the highest logits on the gold tokens, run through
the same postprocessing and metric (`oracle_exact_match`, near 100).

Run from the repository root (needs `transformers`, `accelerate`, `datasets`
and `torchmetrics`):

    python benchmarks/qa_reference.py --output qa_reference.json
    python benchmarks/qa_reference.py --max-steps 20 --train-articles 0:2 --validation-articles 20:21   # smoke run
    python benchmarks/qa_reference.py --max-steps 0 --validation-articles 20:21   # the untrained model only

It prints one JSON line: exact_match, f1, train_seconds (the Trainer's
`train()` call), eval_seconds (prediction, postprocessing and scoring),
total_seconds (the whole process from before its imports), the number of
training windows, the settings and the checks. `--output FILE` also writes it
to FILE. The Trainer's logs go to stderr; its output folder is a temporary one,
so nothing is written into the repository.
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_MODEL = SHARED / "models" / "all-minilm-l6-v2"
DEFAULT_DATA = SHARED / "data" / "squad" / "dev.json"


def article_range(text: str) -> tuple[int, int]:
    """'0:20' -> (0, 20): a Python slice of the file's articles."""
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:STOP (like 0:20), got {text!r}") from None
    if not 0 <= start < stop:
        raise argparse.ArgumentTypeError(f"expected 0 <= START < STOP, got {text!r}")
    return start, stop


def read_squad(path: Path, articles: tuple[int, int]) -> list[dict]:
    """The questions of articles[0]:articles[1] of an official SQuAD v1.1 JSON file, one dict each."""
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    examples = []
    for article in data[articles[0]:articles[1]]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                examples.append({
                    "id": qa["id"],
                    # run_qa.py: some questions have a lot of whitespace on the left, which wastes window room.
                    "question": qa["question"].lstrip(),
                    "context": paragraph["context"],
                    "answers": {"text": [a["text"] for a in qa["answers"]],
                                "answer_start": [a["answer_start"] for a in qa["answers"]]},
                })
    return examples


def encode_windows(tokenizer, examples: list[dict], args: argparse.Namespace):
    """All windows of every (question, context) pair, with offsets and the window -> example mapping."""
    return tokenizer(
        [e["question"] for e in examples], [e["context"] for e in examples],
        truncation="only_second", max_length=args.max_length, stride=args.doc_stride,
        return_overflowing_tokens=True, return_offsets_mapping=True, padding=False,
    )


def answer_tokens(encoding, window: int, offsets, start_char: int, end_char: int) -> tuple[int, int] | None:
    """The first and last token of characters start_char:end_char in a window, or None when not wholly inside it."""
    sequence_ids = encoding.sequence_ids(window)
    context_start = sequence_ids.index(1)
    context_end = len(sequence_ids) - 1 - sequence_ids[::-1].index(1)
    if not (offsets[context_start][0] <= start_char and offsets[context_end][1] >= end_char):
        return None
    start = context_start
    while start <= context_end and offsets[start][0] <= start_char:
        start += 1
    end = context_end
    while end >= context_start and offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def prepare_train_features(tokenizer, examples: list[dict], args: argparse.Namespace) -> dict:
    """run_qa.py's prepare_train_features: windows labelled with the answer's tokens, or [CLS] (0) when it is cut."""
    encoding = encode_windows(tokenizer, examples, args)
    starts, ends = [], []
    for window, offsets in enumerate(encoding["offset_mapping"]):
        answers = examples[encoding["overflow_to_sample_mapping"][window]]["answers"]
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        span = answer_tokens(encoding, window, offsets, start_char, end_char)
        start, end = span if span is not None else (0, 0)
        starts.append(start)
        ends.append(end)
    features = {name: encoding[name] for name in tokenizer.model_input_names if name in encoding}
    return {**features, "start_positions": starts, "end_positions": ends}


def prepare_validation_features(tokenizer, examples: list[dict], args: argparse.Namespace) -> tuple[dict, list[str], list, object]:
    """run_qa.py's prepare_validation_features: the windows, each window's example id, and offsets (None off the context)."""
    encoding = encode_windows(tokenizer, examples, args)
    example_ids, offset_mapping = [], []
    for window, offsets in enumerate(encoding["offset_mapping"]):
        example_ids.append(examples[encoding["overflow_to_sample_mapping"][window]]["id"])
        sequence_ids = encoding.sequence_ids(window)
        offset_mapping.append([o if sequence_ids[k] == 1 else None for k, o in enumerate(offsets)])
    features = {name: encoding[name] for name in tokenizer.model_input_names if name in encoding}
    return features, example_ids, offset_mapping, encoding


def postprocess(examples: list[dict], example_ids: list[str], offset_mapping: list, start_logits, end_logits,
                args: argparse.Namespace) -> list[dict]:
    """run_qa.py's postprocess_qa_predictions (SQuAD v1: always an answer): the best span of each question's windows."""
    import numpy as np

    windows_of = collections.defaultdict(list)
    for window, example_id in enumerate(example_ids):
        windows_of[example_id].append(window)
    predictions = []
    for example in examples:
        context = example["context"]
        best_text, best_score = "", None
        for window in windows_of[example["id"]]:
            offsets = offset_mapping[window]
            # Predictions come padded to the longest window of all batches: keep this window's own tokens.
            start_logit = np.asarray(start_logits[window][: len(offsets)], dtype=np.float32)
            end_logit = np.asarray(end_logits[window][: len(offsets)], dtype=np.float32)
            start_indexes = np.argsort(start_logit)[-1: -args.n_best - 1: -1].tolist()
            end_indexes = np.argsort(end_logit)[-1: -args.n_best - 1: -1].tolist()
            for start in start_indexes:
                for end in end_indexes:
                    if offsets[start] is None or offsets[end] is None:
                        continue  # not in the context: a question or special token
                    if end < start or end - start + 1 > args.max_answer_length:
                        continue
                    score = float(start_logit[start] + end_logit[end])
                    if best_score is None or score > best_score:
                        best_text, best_score = context[offsets[start][0]: offsets[end][1]], score
        predictions.append({"id": example["id"], "prediction_text": best_text})
    return predictions


def squad_scores(examples: list[dict], predictions: list[dict]) -> dict:
    """torchmetrics' SQuAD, as nlpkit scores: exact match and F1 on 0-100 against the best-matching reference."""
    from torchmetrics.text import SQuAD

    metric = SQuAD()
    metric.update(predictions, [{"id": e["id"], "answers": e["answers"]} for e in examples])
    return {name: float(value) for name, value in metric.compute().items()}


def offset_check(examples: list[dict], example_ids: list[str], offset_mapping: list, encoding, args) -> dict:
    """Gold spans through the offsets: text mismatches, and an oracle's score through postprocess and the metric."""
    import numpy as np

    by_id = {e["id"]: e for e in examples}
    checked = mismatches = 0
    start_logits = [np.zeros(len(offsets), dtype=np.float32) for offsets in offset_mapping]
    end_logits = [np.zeros(len(offsets), dtype=np.float32) for offsets in offset_mapping]
    for window, offsets in enumerate(offset_mapping):
        example = by_id[example_ids[window]]
        answers = example["answers"]
        for number, (text, start_char) in enumerate(zip(answers["text"], answers["answer_start"])):
            span = answer_tokens(encoding, window, encoding["offset_mapping"][window], start_char, start_char + len(text))
            if span is None:
                continue
            checked += 1
            start, end = span
            decoded = example["context"][offsets[start][0]: offsets[end][1]]
            if decoded != text:
                mismatches += 1
                if mismatches <= 5:
                    print(f"offset mismatch {example['id']}: gold {text!r}, decoded {decoded!r}", file=sys.stderr)
            if number == 0:  # the oracle points at the first reference answer
                start_logits[window][start] = end_logits[window][end] = 10.0
    oracle = squad_scores(examples, postprocess(examples, example_ids, offset_mapping, start_logits, end_logits, args))
    return {"gold_spans_checked": checked, "offset_mismatches": mismatches,
            "oracle_exact_match": oracle["exact_match"], "oracle_f1": oracle["f1"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="a Hugging Face-format BERT folder")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="an official SQuAD v1.1 JSON file")
    parser.add_argument("--train-articles", type=article_range, default=(0, 20), help="START:STOP of the file's articles")
    parser.add_argument("--validation-articles", type=article_range, default=(20, 24), help="START:STOP")
    parser.add_argument("--max-length", type=int, default=256, help="tokens a window, question and template included")
    parser.add_argument("--doc-stride", type=int, default=64, help="context tokens consecutive windows share")
    parser.add_argument("--max-answer-length", type=int, default=30, help="the longest answer, in tokens")
    parser.add_argument("--n-best", type=int, default=20, help="start and end candidates a window")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="fraction of the steps spent warming up")
    parser.add_argument("--schedule", default="linear", help="the Trainer's lr_scheduler_type")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16", help="bf16: autocast, fp32 weights")
    parser.add_argument("--no-group-by-length", action="store_true", help="shuffle windows at random instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop training after N optimizer steps (a smoke run); 0: no training, score the untrained model")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--logging-steps", type=int, default=50)
    parser.add_argument("--output", help="also write the JSON line to this file")
    args = parser.parse_args()
    if args.max_steps is not None and args.max_steps < 0:
        parser.error("--max-steps: expected N >= 0")
    for path in (Path(args.model), Path(args.data)):
        if not path.exists():
            print(f"qa_reference: skipped, {path} not found", file=sys.stderr)
            return

    import torch
    import transformers
    from datasets import Dataset
    from torch.utils.data import SequentialSampler

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.set_seed(args.seed)  # the new QA head's initial weights
    transformers.logging.set_verbosity_warning()

    class LogToStderr(transformers.TrainerCallback):
        def on_log(self, _args, state, _control, logs=None, **_kwargs):
            print(f"step {state.global_step}: {json.dumps(logs)}", file=sys.stderr, flush=True)

    class QATrainer(transformers.Trainer):
        # transformers 5 also length-groups (and so reorders) the evaluation windows under group_by_length;
        # predictions must come back in the windows' order to be matched with their questions.
        def _get_eval_sampler(self, eval_dataset):
            return SequentialSampler(eval_dataset)

    data_start = time.perf_counter()
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    train_examples = read_squad(Path(args.data), args.train_articles)
    validation_examples = read_squad(Path(args.data), args.validation_articles)
    train_features = prepare_train_features(tokenizer, train_examples, args)
    validation_features, example_ids, offset_mapping, validation_encoding = prepare_validation_features(
        tokenizer, validation_examples, args)
    train_dataset = Dataset.from_dict(train_features)
    validation_dataset = Dataset.from_dict(validation_features)
    data_seconds = time.perf_counter() - data_start
    checks = offset_check(validation_examples, example_ids, offset_mapping, validation_encoding, args)
    train_cls = sum(s == 0 for s in train_features["start_positions"])

    model = transformers.AutoModelForQuestionAnswering.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        training_args = transformers.TrainingArguments(
            output_dir=tmp, save_strategy="no", report_to=[], disable_tqdm=True,
            logging_strategy="steps", logging_steps=args.logging_steps,
            learning_rate=args.lr, weight_decay=args.weight_decay, lr_scheduler_type=args.schedule,
            warmup_steps=args.warmup_ratio,  # transformers 5: a float below 1 is warmup_ratio
            per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.eval_batch_size,
            num_train_epochs=args.epochs, max_steps=args.max_steps or -1,
            bf16=args.precision == "bf16", use_cpu=True, seed=args.seed, data_seed=args.seed,
            train_sampling_strategy="random" if args.no_group_by_length else "group_by_length",
        )
        trainer = QATrainer(
            model=model, args=training_args, train_dataset=train_dataset, processing_class=tokenizer,
            data_collator=transformers.DataCollatorWithPadding(tokenizer),
        )
        trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
        trainer.add_callback(LogToStderr())

        train_start = time.perf_counter()
        trained = trainer.train() if args.max_steps != 0 else None
        train_seconds = time.perf_counter() - train_start

        eval_start = time.perf_counter()
        start_logits, end_logits = trainer.predict(validation_dataset).predictions
        predictions = postprocess(validation_examples, example_ids, offset_mapping, start_logits, end_logits, args)
        scores = squad_scores(validation_examples, predictions)
        eval_seconds = time.perf_counter() - eval_start

    result = {
        "side": "transformers",
        "exact_match": round(scores["exact_match"], 2),
        "f1": round(scores["f1"], 2),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
        "data_seconds": round(data_seconds, 1),
        "total_seconds": round(time.perf_counter() - PROCESS_START, 1),
        "train_runtime": round(trained.metrics["train_runtime"], 1) if trained else 0.0,
        "train_loss": round(trained.training_loss, 4) if trained else None,
        "steps": trainer.state.global_step,
        "train_examples": len(train_examples),
        "train_windows": len(train_features["input_ids"]),
        "train_windows_without_answer": train_cls,
        "validation_examples": len(validation_examples),
        "validation_windows": len(example_ids),
        "settings": {
            "model": args.model, "data": args.data,
            "train_articles": "{}:{}".format(*args.train_articles),
            "validation_articles": "{}:{}".format(*args.validation_articles),
            "max_length": args.max_length, "doc_stride": args.doc_stride, "max_answer_length": args.max_answer_length,
            "n_best": args.n_best, "lr": args.lr, "weight_decay": args.weight_decay, "warmup_ratio": args.warmup_ratio,
            "schedule": args.schedule, "batch_size": args.batch_size, "eval_batch_size": args.eval_batch_size,
            "epochs": args.epochs, "max_steps": args.max_steps, "precision": args.precision,
            "group_by_length": not args.no_group_by_length, "seed": args.seed, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
        },
        "checks": checks,
        "sample_predictions": [{"question": e["question"], "prediction": p["prediction_text"], "gold": e["answers"]["text"][0]}
                               for e, p in zip(validation_examples[:3], predictions[:3])],
    }
    line = json.dumps(result)
    print(line, flush=True)
    if args.output:
        Path(args.output).write_text(line + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
