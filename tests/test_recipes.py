"""The shipped recipes in config/: each one loads, validates and means what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from finlora.config import TrainConfig, resolve_config
from finlora.errors import FinloraError
from finlora.modeling import apply_lora, load_classifier, parameter_counts

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
RECIPES = sorted(CONFIG_DIR.glob("*.yaml"))


def test_the_documented_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"phrasebank_lora.yaml", "phrasebank_full.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_resolves_to_a_valid_config(recipe):
    config = resolve_config({}, str(recipe))
    assert isinstance(config, TrainConfig)
    # A flag still overrides the recipe.
    assert resolve_config({"epochs": "1"}, str(recipe)).epochs == 1.0


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_an_unknown_key_in_a_recipe_is_rejected(recipe, tmp_path):
    broken = tmp_path / recipe.name
    broken.write_text(recipe.read_text() + "\nlora_rank: 8\n")
    with pytest.raises(FinloraError, match="unknown key.*lora_rank"):
        resolve_config({}, str(broken))


def test_default_lora_recipe_trains_under_one_percent_of_the_packaged_model(
    packaged_model_dir,
):
    config = resolve_config({}, str(CONFIG_DIR / "phrasebank_lora.yaml"))
    model = load_classifier(str(packaged_model_dir), ["negative", "neutral", "positive"])
    model = apply_lora(
        model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules
    )
    trainable, total = parameter_counts(model)
    assert 0 < trainable / total < 0.01


def test_plain_finlora_train_on_phrasebank_is_the_documented_lora_recipe():
    """README's `finlora train --dataset phrasebank_allagree` trains the measured recipe."""
    recipe = resolve_config({}, str(CONFIG_DIR / "phrasebank_lora.yaml")).to_dict()
    defaults = resolve_config({"dataset": "phrasebank_allagree"}).to_dict()
    # Neither pins the LoRA targets: they resolve per architecture, so `--model_name` of
    # another encoder (MPNet, RoBERTa ...) works with the recipe too.
    assert recipe["lora_target_modules"] is None
    differing = {
        key: (defaults[key], value)
        for key, value in recipe.items()
        if key != "output_dir" and defaults[key] != value
    }
    assert differing == {}


def test_every_named_dataset_has_a_shipped_preset_recipe():
    from finlora.config import DATASET_PRESETS, recipes
    from finlora.data.sources import named_datasets

    assert set(DATASET_PRESETS) == set(named_datasets())
    for with_lora, without in DATASET_PRESETS.values():
        assert {with_lora, without} <= set(recipes())
        assert {f"{with_lora}.yaml", f"{without}.yaml"} <= {p.name for p in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_works_as_a_preset(recipe):
    config = resolve_config({"preset": recipe.stem})
    assert config.preset == recipe.stem
