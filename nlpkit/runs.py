"""The run folder: everything a trained run needs to be loaded, evaluated and served.

Layout (format version 1)::

    RUN_DIR/
      run.json                format version, task, creation time, package versions, the training process
                              (host, pid), its last sign of life and the end status
      recipe.yaml             the fully resolved recipe
      backbone.json           the backbone config
      task_state.json         what the task learnt from the data (its label set ...)
      tokenizer.json          the tokenizer, and tokenizer_config.json (its special tokens)
      model.safetensors       the best weights (backbone and head)
      metrics.csv             the metric history, one row per logging step (kept whole across resumes)
      metrics.json            the final metrics (validation at the best checkpoint, test)
      samples.txt             what the task showed after each validation pass (generations ...)
      predictions/validation.jsonl  the best model's answers to the validation split (nlpkit.report)
      report.html, report/    the run report and its figures (nlpkit.report)
      checkpoints/            Lightning checkpoints (best and last)
      source_checkpoint.json  a fine-tuned run's pretrained folder, family and config.json (for export)

Every file is written to a temporary name, then renamed, so a crash never
leaves a half-written file where a good one was. ``run.json`` says
``"status": "failed"`` (with the error) when a run failed after its first
checkpoint; a run that failed before it leaves no folder. While a run trains,
``run.json`` names its process (``"process": {"host", "pid", "start_ticks"}``)
and its ``heartbeat`` (refreshed every minute), which ``nlpkit runs`` reads to
tell a running run from an interrupted one (``nlpkit.run_table``).
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any

import yaml

from nlpkit._files import atomic_file, atomic_write, make_folder, read_text
from nlpkit._process import this_process
from nlpkit._yaml import load_yaml
from nlpkit.errors import NlpkitError

__all__ = ["RunFolder", "FORMAT_VERSION"]

FORMAT_VERSION = 1
RUN_FILE = "run.json"
RECIPE_FILE = "recipe.yaml"
BACKBONE_FILE = "backbone.json"
TASK_STATE_FILE = "task_state.json"
WEIGHTS_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
SOURCE_CHECKPOINT_FILE = "source_checkpoint.json"
LAST_CHECKPOINT = "last.ckpt"
SAMPLES_FILE = "samples.txt"

_PACKAGES = ("nlpkit", "torch", "pytorch-lightning", "torchmetrics", "datasets", "tokenizers", "pluggy", "safetensors")


def utc_now() -> str:
    """The time now, in UTC, as ISO 8601 with its offset (run.json's ``heartbeat`` and ``ended``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class RunFolder:
    """A run folder on disk; see the module docstring for its layout."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, output_dir: str | Path, name: str, path: str | Path | None = None) -> RunFolder:
        """Make a new, empty run folder ``OUTPUT_DIR/NAME-YYYYmmdd-HHMMSS``; never reuse one.

        ``path`` names the folder instead (a multi-machine run's shared folder);
        it may exist but must hold no run yet.
        """
        if path is not None:
            folder = Path(path)
            if (folder / RUN_FILE).exists():
                raise NlpkitError(f"{folder} already holds a run; continue it with --resume")
            make_folder(folder, "the run folder")
            return cls(folder)
        output_dir = Path(output_dir)
        make_folder(output_dir, "output_dir")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        for attempt in range(1000):
            path = output_dir / (f"{name}-{stamp}" + (f"-{attempt + 1}" if attempt else ""))
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as error:
                raise NlpkitError(f"output_dir: cannot create a run folder in {output_dir} ({error.strerror})") from None
            return cls(path)
        raise NlpkitError(f"output_dir: cannot create a new run folder in {output_dir}")

    @classmethod
    def open(cls, path: str | Path) -> RunFolder:
        """Open a finished run folder (one with weights), checking its format version."""
        run = cls.open_unfinished(path)
        if not run.has_weights:
            error = run.read_json(RUN_FILE).get("error")
            how = f"it failed ({error})" if error else "the run did not finish"
            raise NlpkitError(f"{run.path}: no {WEIGHTS_FILE}: {how}; continue it with --resume")
        return run

    @classmethod
    def open_unfinished(cls, path: str | Path) -> RunFolder:
        """Open a run folder that may still be training, checking its format version."""
        run = cls(Path(path))
        if not (run.path / RUN_FILE).is_file():
            raise NlpkitError(f"'{path}' is not an nlpkit run folder (no {RUN_FILE})")
        info = run.read_json(RUN_FILE)
        version = info.get("format_version") if isinstance(info, dict) else None
        if version != FORMAT_VERSION:
            raise NlpkitError(f"{run.path / RUN_FILE}: run-folder format {version} is not supported "
                              f"(this nlpkit reads {FORMAT_VERSION})")
        return run

    # -- writing --------------------------------------------------------------

    def write_json(self, name: str, data: Any) -> None:
        atomic_write(self.path / name, json.dumps(data, indent=2, sort_keys=False) + "\n")

    def write_start(self, task: str, recipe: dict[str, Any], backbone: dict[str, Any], task_state: dict[str, Any], plugins: list[str]) -> None:
        """Write what is known before training: the recipe, configs, task state and versions.

        ``run.json`` comes last: other processes take its presence to mean the
        folder is ready to join.
        """
        self.write_recipe(recipe)
        self.write_json(BACKBONE_FILE, backbone)
        self.write_json(TASK_STATE_FILE, task_state)
        self.write_json(
            RUN_FILE,
            {
                "format_version": FORMAT_VERSION,
                "task": task,
                "created": _dt.datetime.now().isoformat(timespec="seconds"),
                "plugins": plugins,
                "versions": package_versions(),
                "process": this_process(),
                "heartbeat": utc_now(),
            },
        )

    def record_process(self) -> None:
        """Record in run.json that this process trains the run now (a resumed run): its end status goes."""
        info = {k: v for k, v in self.read_json(RUN_FILE).items() if k not in ("status", "error", "ended")}
        self.write_json(RUN_FILE, {**info, "process": this_process(), "heartbeat": utc_now()})

    def beat(self) -> None:
        """Refresh run.json's ``heartbeat``: the run's process still lives."""
        self.write_json(RUN_FILE, {**self.read_json(RUN_FILE), "heartbeat": utc_now()})

    def mark_failed(self, error: str) -> None:
        """Record in run.json that the run failed, and why (it keeps checkpoints to resume from)."""
        self.write_json(RUN_FILE, {**self.read_json(RUN_FILE), "status": "failed", "error": error, "ended": utc_now()})

    def mark_finished(self) -> None:
        """Record in run.json that the run finished (a resumed run's failure is forgotten)."""
        info = {k: v for k, v in self.read_json(RUN_FILE).items() if k != "error"}
        self.write_json(RUN_FILE, {**info, "status": "finished", "ended": utc_now()})

    def write_recipe(self, recipe: dict[str, Any]) -> None:
        atomic_write(self.path / RECIPE_FILE, yaml.safe_dump(recipe, sort_keys=False))

    def save_weights(self, model: Any, leave_out: set[str] | None = None) -> None:
        """Save a module's weights as safetensors (tied weights stored once).

        Args:
            model: the module.
            leave_out: state names not to save (a LoRA run's frozen base
                weights, which its base checkpoint folder holds).
        """
        from safetensors.torch import save_file, save_model

        metadata = {"format": "pt", "nlpkit_format_version": str(FORMAT_VERSION)}
        with atomic_file(self.path / WEIGHTS_FILE) as tmp:
            if leave_out:
                kept = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in leave_out}
                save_file(kept, str(tmp), metadata=metadata)
            else:
                save_model(model, str(tmp), metadata=metadata)

    # -- reading --------------------------------------------------------------

    def read_json(self, name: str) -> Any:
        path = self.path / name
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise NlpkitError(f"{path} is missing: the run folder is incomplete") from None
        except (OSError, UnicodeDecodeError) as error:
            raise NlpkitError(f"{path}: cannot read it ({error})") from None
        except json.JSONDecodeError as error:
            raise NlpkitError(f"{path}: not valid JSON (line {error.lineno}: {error.msg})") from None

    def read_recipe(self) -> dict[str, Any]:
        path = self.path / RECIPE_FILE
        recipe = load_yaml(read_text(path, "the run's recipe"), str(path))
        if not isinstance(recipe, dict):
            raise NlpkitError(f"{path}: expected the run's recipe (a mapping of sections), got {type(recipe).__name__}")
        return recipe

    def load_weights(self, model: Any, loaded_already: set[str] | None = None) -> None:
        """Load the saved weights into ``model``; every one of its weights must be in the file or ``loaded_already``."""
        from safetensors.torch import load_file

        try:
            # Not safetensors' load_model: it reports the name of a tied weight stored once (a decoder's
            # LM head) as unexpected once the backbone's tie hook has filled it in; a strict load is right.
            result = model.load_state_dict(load_file(str(self.path / WEIGHTS_FILE)), strict=not loaded_already)
            missing = set(result.missing_keys) - (loaded_already or set())
            if missing or result.unexpected_keys:
                raise RuntimeError(f"missing {sorted(missing)[:3]}, unexpected {result.unexpected_keys[:3]}")
        except Exception as error:  # safetensors raises its own error types for bad files
            raise NlpkitError(f"{self.path / WEIGHTS_FILE}: cannot load weights: {str(error).splitlines()[0]}") from None

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def has_weights(self) -> bool:
        """Whether the run finished and saved its model (what predict, evaluate and export read)."""
        return (self.path / WEIGHTS_FILE).is_file()

    @property
    def has_checkpoint(self) -> bool:
        """Whether a training checkpoint was written (see ``nlpkit.training.checkpoints``)."""
        return self.checkpoint_dir.is_dir() and any(self.checkpoint_dir.glob("*.ckpt"))
