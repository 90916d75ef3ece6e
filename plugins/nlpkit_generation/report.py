"""The generation part of the run report: perplexity against steps, the samples, the hardest validation texts."""

from __future__ import annotations

import math

from nlpkit.tasks import Curves, Prediction, ReportSection, RunRecord, Table, Text

_SHOWN = 10
_SAMPLE_LINES = 200  # the end of samples.txt: the latest samples matter most


def generation_section(predictions: list[Prediction], run: RunRecord) -> ReportSection:
    """Training and validation perplexity, ``samples.txt`` and the validation texts the model finds hardest."""
    # The training loss is the mean loss per predicted token, so its exp is the training perplexity.
    train = [(step, math.exp(min(loss, 50.0))) for step, loss in run.curve("train_loss")]
    curves = Curves("Perplexity", {"training (exp train_loss)": train, "validation": run.curve("val_perplexity")},
                    y_label="perplexity", log_y=True)
    lines = run.samples.splitlines()
    samples = Text("Samples", "\n".join(lines[-_SAMPLE_LINES:]) or "(none: generation.sample_every is 0, or no "
                                                                    "validation has run)",
                   note=f"the last {_SAMPLE_LINES} lines of samples.txt" if len(lines) > _SAMPLE_LINES
                   else "samples.txt: the model's continuations after each validation")
    scored = [p for p in predictions if isinstance(p.prediction, dict) and p.prediction.get("perplexity") is not None]
    hardest = sorted(scored, key=lambda p: -p.prediction["perplexity"])[:_SHOWN]
    table = Table("Hardest validation texts", ["perplexity", "tokens", "text"],
                  [[p.prediction["perplexity"], p.prediction["tokens"], _excerpt(p.example)] for p in hardest],
                  note=f"the {len(hardest)} validation texts (of {len(scored)}) with the highest perplexity, each "
                       f"read on its own (cut at the block size)")
    return ReportSection("Generation", [curves, samples, table])


def _excerpt(example: dict) -> str:
    text = str(example.get("text", "")) + (f" → {example['completion']}" if example.get("completion") else "")
    return text if len(text) <= 300 else text[:300] + " …"
