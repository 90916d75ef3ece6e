"""Checkpoint files written atomically: a temporary file in the same folder, then a rename."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from nlpkit.runs import atomic_file

__all__ = ["AtomicCheckpointIO"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, with writes that a crash cannot leave half done.

    Lightning's own save stages the file in the system temporary folder and
    moves it into place; when that folder is on another filesystem the move is
    a copy, which a ``kill -9`` can interrupt. A temporary file beside the
    target and ``os.replace`` make the switch a single atomic rename.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            torch.save(checkpoint, tmp)
