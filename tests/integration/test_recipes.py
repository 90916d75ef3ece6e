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
# The base recipe, with the overrides the comment gives it.
BASES = {
    "generation/multi30k-captions-lora.yaml": ("generation/shakespeare-bpe.yaml", ()),
    "generation/gsm8k-sft.yaml": ("generation/shakespeare-bpe.yaml", (
        "backbone.config.max_positions=512", "tokenizer.max_length=512", "generation.block_size=512",
        "training.batch_size=4")),
}
_exported: dict[tuple[str, tuple[str, ...]], Path] = {}
# What a two-step check need not wait for: gsm8k-sft answers 100 questions of up to 200 tokens each validation,
# in batches of 16 rows of 512 tokens.
SHORTER = {"generation/gsm8k-sft.yaml": ["generation.answer_questions=4", "generation.answer_max_new_tokens=16",
                                         "training.batch_size=4"]}


def _needs_shared(path: Path) -> bool:
    return "../shared" in path.read_text() or "${recipe_dir}/../../shared" in path.read_text()


def _base_overrides(path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``backbone.pretrained=`` an exported two-step run of the recipe that makes ``path``'s base, if it has one."""
    base = BASES.get(str(path.relative_to(REPO / "recipes")))
    if base is None:
        return []
    if base not in _exported:
        recipe, changes = base
        out = tmp_path_factory.mktemp("base")
        result = nlpkit.run(REPO / "recipes" / recipe, overrides=[*FAST, *changes, "training.max_steps=2", "report=false",
                                                                 "trainer.limit_val_batches=2", "training.eval_batch_size=16",
                                                                 "trainer.limit_test_batches=2", f"output_dir={out}"])
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
    shorter = SHORTER.get(str(path.relative_to(REPO / "recipes")), [])
    result = nlpkit.run(path, overrides=[*FAST, *_base_overrides(path, tmp_path_factory), *shorter, "training.max_steps=2",
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
