"""A run's Lightning checkpoints: written atomically, read without unpickling code, refreshed often.

``checkpoints/last.ckpt`` is what ``--resume`` continues from: refreshed every
``training.checkpoint_every_n_steps`` optimizer steps and at every epoch end,
so a run killed at any moment loses at most that much work. ``best.ckpt``
(and, with ``training.average_checkpoints``, ``epoch-NNN.ckpt``) are written
by Lightning's ``ModelCheckpoint``; whichever of them was saved last is the
one a resumed run continues from.

Checkpoints hold tensors and plain values only, so they load with
``torch.load(weights_only=True)``: a file that would need more (a pickle that
names a function to call) is refused before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Checkpoint
from pytorch_lightning.trainer.states import TrainerFn
from typing_extensions import override

from nlpkit._files import atomic_file
from nlpkit.backbones.checkpoints._common import load_torch_file
from nlpkit.errors import NlpkitError

__all__ = ["AtomicCheckpointIO", "LatestCheckpoint", "read_checkpoint", "latest_checkpoint", "SAVE_COUNTER"]

# Where RunHistory (nlpkit.training.history) numbers the checkpoints it saw written, in save order.
SAVE_COUNTER = ("callbacks", "RunHistory", "saves")


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Load a Lightning checkpoint onto the CPU with ``weights_only=True``: tensors and plain values, never code.

    ``mmap=True`` maps the tensors instead of reading them, for a look at the
    checkpoint's metadata that costs no memory. (Lightning moves what it
    restores to the run's device.)

    Raises:
        NlpkitError: one line naming the file: not a safe checkpoint (and what
            it would have loaded), or unreadable (truncated, corrupt, empty).
    """
    path = Path(path)
    checkpoint = load_torch_file(path, "checkpoint", mmap=mmap)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise NlpkitError(f"{path} is not a Lightning checkpoint of an nlpkit run (no state_dict)")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, with writes a crash cannot leave half done and reads that run no code.

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

    @override
    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # Always weights_only, whatever the caller asks: a checkpoint is data, not a program.
        checkpoint = read_checkpoint(path)
        _relocate(checkpoint, Path(path).resolve().parent)
        return checkpoint


def _relocate(checkpoint: dict[str, Any], folder: Path) -> None:
    """Point the checkpoint's ``ModelCheckpoint`` states at ``folder``, where the checkpoint now lies.

    They hold absolute paths, and Lightning drops the best score of a state
    whose folder differs: a run folder that was moved or copied would then
    take a worse epoch for its best one after a resume.
    """
    for state in checkpoint.get("callbacks", {}).values():
        old = state.get("dirpath") if isinstance(state, dict) else None
        if not isinstance(old, str) or Path(old) == folder:
            continue

        def moved(value: Any) -> Any:
            inside = isinstance(value, str) and Path(value).parent == Path(old)
            return str(folder / Path(value).name) if inside else value

        state["dirpath"] = str(folder)
        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in state:
                state[key] = moved(state[key])
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {moved(name): score for name, score in state["best_k_models"].items()}


class LatestCheckpoint(Checkpoint):
    """Refresh ``path`` (``checkpoints/last.ckpt``) every ``every_n_steps`` optimizer steps and at every epoch end.

    Lightning's ``ModelCheckpoint`` takes one trigger (steps or epochs); a run
    that is killed right after an epoch needs both, or that epoch is lost.

    When it saves decides what a resumed run can reproduce, so both moments
    come after everything else of their step:
    - mid-epoch, at the start of the batch after the step: Lightning logs a
      step's metrics after ``on_train_batch_end``, and a checkpoint taken there
      would lose that row of the history (the step is not replayed);
    - at the epoch end, after the best checkpoint and early stopping have
      seen the epoch's validation: as a ``Checkpoint`` callback listed after
      the others, Lightning calls it last. ``should_stop`` is kept in its
      state, so a run stopped early stays stopped when resumed there.

    ``trainer.save_checkpoint`` runs on every process (it synchronises them)
    and writes from the first.
    """

    def __init__(self, path: Path, every_n_steps: int) -> None:
        self.path = path
        self.every_n_steps = every_n_steps
        self._saved_step = -1
        self._due = False
        self._validated_step = -1
        self._between_batches = False
        self._stopped = False
        self._trainer: pl.Trainer | None = None

    def _save(self, trainer: pl.Trainer, between_batches: bool = False) -> None:
        if trainer.sanity_checking or trainer.global_step == self._saved_step:
            return
        self._between_batches = between_batches
        try:
            trainer.save_checkpoint(self.path)
        finally:
            self._between_batches = False
        self._saved_step = trainer.global_step

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self._between_batches:
            return
        # At on_train_batch_start Lightning has counted the next batch as fetched ("ready") already.
        # The checkpoint must read as one taken when the previous batch was done: else a resumed run
        # counts one batch too many (every logged row's step runs one ahead) and, when that batch is
        # the epoch's last, skips the epoch's validation as if it had run.
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        for counter in ("total", "current"):
            progress[counter]["ready"] -= 1
        progress["is_last_batch"] = False

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        # global_step counts optimizer steps: several batches share one while gradients accumulate,
        # and the first of them comes right after the step.
        step = trainer.global_step
        if step > 0 and step % self.every_n_steps == 0:
            self._due = True
        # Right after a mid-epoch validation (trainer.val_check_interval), Lightning resumes as if from
        # that validation's own checkpoint (best.ckpt): the save waits for the next batch.
        if self._due and self._validated_step != step:
            self._save(trainer, between_batches=True)
            self._due = False

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._validated_step = trainer.global_step

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save(trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"should_stop": bool(self._trainer is not None and self._trainer.should_stop)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._stopped = bool(state_dict.get("should_stop", False))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stopped:
            trainer.should_stop = True


def latest_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint in ``folder`` a resumed run continues from, loaded safely; None when there is none.

    ``last.ckpt`` whenever there is one: it is written last of all at an epoch
    end, so it holds what every callback made of the epoch (the best score,
    the checkpoints kept for averaging); a run killed between the best
    checkpoint and it replays the steps since the one before, to the same
    result. Without it (a run killed right after its first epoch's best
    checkpoint), the checkpoint written last, by the save counter nlpkit keeps
    in each (:class:`nlpkit.training.history.RunHistory`), else by step.

    Raises:
        NlpkitError: a checkpoint that cannot be read safely (named).
    """
    found = []
    for path in sorted(folder.glob("*.ckpt")) if folder.is_dir() else []:
        checkpoint = read_checkpoint(path, mmap=True)
        saves = checkpoint
        for key in SAVE_COUNTER:
            saves = saves.get(key, {}) if isinstance(saves, dict) else {}
        order = (path.name == "last.ckpt", saves if isinstance(saves, int) else -1, int(checkpoint.get("global_step", -1)))
        found.append((order, path, checkpoint))
    if not found:
        return None
    _, path, checkpoint = max(found, key=lambda item: item[0])
    return path, checkpoint
