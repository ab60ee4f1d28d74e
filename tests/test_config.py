"""Settings: precedence flag > recipe > default, type checks, unknown keys."""

from __future__ import annotations

import pytest

from finlora.config import TrainConfig, load_recipe, resolve_config
from finlora.errors import FinloraError


def test_precedence_flag_over_recipe_over_default(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 5\nlearning_rate: 0.001\nlora_target_modules: [query, key]\n")
    config = resolve_config({"epochs": "2"}, str(recipe))
    assert config.epochs == 2.0  # flag wins
    assert config.learning_rate == 0.001  # recipe wins over default
    assert config.lora_target_modules == ["query", "key"]
    assert config.batch_size == TrainConfig().batch_size  # default


def test_unknown_recipe_key_is_an_error(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs: 1\nlearnig_rate: 0.1\n")
    with pytest.raises(FinloraError, match="unknown key.*learnig_rate"):
        load_recipe(recipe)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": "many"}, "cannot read 'many' as float"),
        ({"batch_size": "0"}, "at least 1"),
        ({"loss": "hinge"}, "unknown"),
        ({"pooling": "max"}, "--pooling 'max' is unknown; use one of cls, mean"),
        ({"use_lora": "maybe"}, "true or false"),
        ({"test_size": "0.5", "validation_size": "0.45"}, "under 10%"),
        ({"data": "x.csv", "dataset": "phrasebank_allagree"}, "not both"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(FinloraError, match=message):
        resolve_config(overrides)


def test_lists_from_flags():
    config = resolve_config({"labels": "neg, neu,pos", "use_lora": "False"})
    assert config.labels == ["neg", "neu", "pos"]
    assert config.use_lora is False
