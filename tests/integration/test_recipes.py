"""Every shipped recipe validates; each runs end to end for a few steps; the quickstart reaches its target."""

from __future__ import annotations

from pathlib import Path

import pytest

import nlpkit
from nlpkit.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
SHARED = REPO.parent / "shared"
FAST = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


# Recipes that start from a model another recipe trains and `nlpkit export` writes (their comments say so):
# here that recipe's two-step run, exported, stands in for it.
BASES = {"generation/multi30k-captions-lora.yaml": "generation/shakespeare-bpe.yaml"}
_exported: dict[str, Path] = {}


def _needs_shared(path: Path) -> bool:
    return "../shared" in path.read_text() or "${recipe_dir}/../../shared" in path.read_text()


def _base_overrides(path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``backbone.pretrained=`` an exported two-step run of the recipe that makes ``path``'s base, if it has one."""
    base = BASES.get(str(path.relative_to(REPO / "recipes")))
    if base is None:
        return []
    if base not in _exported:
        out = tmp_path_factory.mktemp("base")
        result = nlpkit.run(REPO / "recipes" / base, overrides=[*FAST, "training.max_steps=2",
                                                               "trainer.limit_val_batches=2", f"output_dir={out}"])
        _exported[base] = nlpkit.load(result.run_dir).export(out / "exported")
    return [f"backbone.pretrained={_exported[base]}"]


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO / "recipes")) for p in RECIPES])
def test_shipped_recipe_validates(path, tmp_path_factory):
    if _needs_shared(path) and not SHARED.is_dir():
        pytest.skip("needs ../shared data")
    recipe = load_recipe(path, overrides=_base_overrides(path, tmp_path_factory))
    assert recipe.task in ("classification", "ner", "generation", "qa", "translation")


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO / "recipes")) for p in RECIPES])
def test_shipped_recipe_runs_two_steps(path, tmp_path, tmp_path_factory):
    if _needs_shared(path) and not SHARED.is_dir():
        pytest.skip("needs ../shared data")
    # Small validation batches: the run validates, then writes its predictions (one more pass, beam search for
    # translation) over the same two batches.
    result = nlpkit.run(path, overrides=[*FAST, *_base_overrides(path, tmp_path_factory), "training.max_steps=2",
                                         "trainer.limit_val_batches=2", "training.eval_batch_size=16",
                                         "trainer.limit_test_batches=2", f"output_dir={tmp_path}"])
    assert "val_loss" in result.metrics
    assert nlpkit.load(result.run_dir) is not None
    assert (result.run_dir / "report.html").is_file()  # report: true, the default


@pytest.mark.slow
def test_quickstart_reaches_its_accuracy(tmp_path):
    result = nlpkit.run(REPO / "recipes" / "quickstart.yaml", overrides=[*FAST, f"output_dir={tmp_path}"])
    assert result.metrics["val_accuracy"] >= 0.9
    assert result.metrics["test_accuracy"] >= 0.9
