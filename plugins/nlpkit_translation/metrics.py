"""BLEU and chrF on sacreBLEU's 0-100 scale (imported when a run builds them: torchmetrics takes seconds to import)."""

from __future__ import annotations

from typing import cast

import torch
from torchmetrics.text import CHRFScore, SacreBLEUScore


class SacreBLEU(SacreBLEUScore):
    """Corpus BLEU with sacreBLEU's semantics, on its 0-100 scale."""

    def compute(self) -> torch.Tensor:
        return super().compute() * 100


class CHRF(CHRFScore):
    """chrF with sacreBLEU's defaults (character 6-grams, no word n-grams, beta 2), on its 0-100 scale."""

    def __init__(self, lowercase: bool = False) -> None:
        super().__init__(n_char_order=6, n_word_order=0, beta=2.0, lowercase=lowercase)

    def compute(self) -> torch.Tensor:
        # A tensor: CHRFScore returns a tuple only with return_sentence_level_score, not asked for above.
        return cast(torch.Tensor, super().compute()) * 100
