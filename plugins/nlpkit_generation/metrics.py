"""The generation task's metrics (imported when a run builds them: torchmetrics takes seconds to import)."""

from __future__ import annotations

import torch
import torchmetrics


class Perplexity(torchmetrics.MeanMetric):
    """exp of the mean of per-token losses (nats): the perplexity of the predicted tokens."""

    higher_is_better = False  # type: ignore[assignment]  # torchmetrics' BaseAggregator declares it as None, Metric as bool | None

    def compute(self) -> torch.Tensor:
        return super().compute().exp()
