"""The real all-MiniLM-L6-v2 checkpoint (a 6-layer BERT) matches `transformers`' BertModel.

The folder lives outside the project (`../shared/models/all-minilm-l6-v2`,
see its README); the test skips cleanly where it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nlpkit.backbones import from_pretrained
from nlpkit.backbones.checkpoints import load_checkpoint
from tests.parity._tiny import TOLERANCE, max_diff, transformers

MINILM = Path(__file__).resolve().parents[2].parent / "shared/models/all-minilm-l6-v2"

SENTENCES = [
    "A man is eating food.",
    "Café au lait, naïve façade — and 42 émojis 🙂!",
    "The quick brown fox jumps over the lazy dog while the cat, unimpressed, keeps sleeping on the warm windowsill.",
    "東京は日本の首都です。",
]


@pytest.mark.skipif(not MINILM.is_dir(), reason=f"real checkpoint not found at {MINILM}")
def test_minilm_hidden_states_match_bert_model() -> None:
    loaded = load_checkpoint(MINILM)
    assert loaded.family == "bert" and set(loaded.extra_state) == {"pooler.dense.weight", "pooler.dense.bias"}
    ours = from_pretrained(MINILM)
    reference = transformers.BertModel.from_pretrained(MINILM).eval()
    batch = transformers.AutoTokenizer.from_pretrained(MINILM)(SENTENCES, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # really padded
    with torch.no_grad():
        expected = reference(**batch).last_hidden_state
        hidden = ours(batch["input_ids"], attention_mask=batch["attention_mask"],
                      token_type_ids=batch["token_type_ids"]).last_hidden_state
    assert max_diff(hidden, expected, batch["attention_mask"]) <= TOLERANCE
