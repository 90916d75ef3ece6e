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


def _needs_shared(path: Path) -> bool:
    return "../shared" in path.read_text() or "${recipe_dir}/../../shared" in path.read_text()


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO / "recipes")) for p in RECIPES])
def test_shipped_recipe_validates(path):
    if _needs_shared(path) and not SHARED.is_dir():
        pytest.skip("needs ../shared data")
    recipe = load_recipe(path)
    assert recipe.task in ("classification", "ner", "generation", "qa", "translation")


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO / "recipes")) for p in RECIPES])
def test_shipped_recipe_runs_two_steps(path, tmp_path):
    if _needs_shared(path) and not SHARED.is_dir():
        pytest.skip("needs ../shared data")
    # Small validation batches: the run validates, then writes its predictions (one more pass, beam search for
    # translation) over the same two batches.
    result = nlpkit.run(path, overrides=[*FAST, "training.max_steps=2", "trainer.limit_val_batches=2",
                                         "training.eval_batch_size=16",
                                         "trainer.limit_test_batches=2", f"output_dir={tmp_path}"])
    assert "val_loss" in result.metrics
    assert nlpkit.load(result.run_dir) is not None
    assert (result.run_dir / "report.html").is_file()  # report: true, the default


@pytest.mark.slow
def test_quickstart_reaches_its_accuracy(tmp_path):
    result = nlpkit.run(REPO / "recipes" / "quickstart.yaml", overrides=[*FAST, f"output_dir={tmp_path}"])
    assert result.metrics["val_accuracy"] >= 0.9
    assert result.metrics["test_accuracy"] >= 0.9
