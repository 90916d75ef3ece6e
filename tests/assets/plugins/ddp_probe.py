"""A classification task that says, from every process of a multi-process run, what that process trained.

For ``tests/integration/test_ddp.py``, loaded with ``--plugin ddp_probe``
(this folder on ``PYTHONPATH``). At its first validation after training
(the end of the first epoch, before anything is loaded from a checkpoint)
each process writes ``rank-<global rank>.json`` into the folder that
``NLPKIT_DDP_PROBE_DIR`` names: its rank and world size from
``torch.distributed``, how many training batches it ran, a hash of their
token ids, and a hash of its model's weights as they are in its memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

import nlpkit
from nlpkit_classification import Classification

PROBE_DIR_ENV = "NLPKIT_DDP_PROBE_DIR"


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor of the state dict, names and bytes, in order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class DdpProbe(Classification):
    name = "ddp-probe"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.train_batches = 0
        self.train_data = hashlib.sha256()
        self.reported = False

    def forward(self, model, batch):
        if model.training:
            self.train_batches += 1
            self.train_data.update(batch["input_ids"].numpy().tobytes())
        return super().forward(model, batch)

    def evaluate_batch(self, model, batch, logits):
        # Lightning's sanity check validates before any training: wait for the first real validation.
        if self.train_batches and not self.reported:
            self.reported = True
            distributed = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if distributed else None
            report = {
                "rank": rank,
                "world_size": dist.get_world_size() if distributed else 1,
                "train_batches": self.train_batches,
                "train_data": self.train_data.hexdigest(),
                "weights": weights_hash(model),
            }
            folder = Path(os.environ[PROBE_DIR_ENV])
            (folder / f"rank-{rank}.json").write_text(json.dumps(report), encoding="utf-8")
        return super().evaluate_batch(model, batch, logits)


@nlpkit.hookimpl
def nlpkit_register_tasks():
    return [DdpProbe]
