"""Settings: precedence flag > recipe > default, type checks, unknown keys."""

from __future__ import annotations

import pytest

from finlora.config import SCHEDULERS, CompareConfig, TrainConfig, load_recipe, resolve_config
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
        ({"epochs": "nan"}, "--epochs must be a finite number"),
        ({"learning_rate": "inf"}, "--learning_rate must be a finite number"),
        ({"gradient_accumulation_steps": "0"}, "--gradient_accumulation_steps must be at least 1"),
        ({"warmup_ratio": "-0.5"}, r"--warmup_ratio must be in \[0, 1\]"),
        ({"lr_scheduler_type": "bogus"}, "--lr_scheduler_type 'bogus' is unknown; use one of"),
        ({"lora_dropout": "1.5"}, r"--lora_dropout must be in \[0, 1\)"),
        ({"seed": "-1"}, r"--seed must be in \[0, 4294967295\]"),
        ({"weight_decay": "-1"}, "--weight_decay must be at least 0, got -1.0"),
        ({"imbalance_threshold": "0.5"}, "--imbalance_threshold is a max/min class ratio"),
        ({"output_dir": " "}, "--output_dir is empty"),
        ({"class_weights": "abc"}, "--class_weights 'abc': use balanced, inverse, sqrt, none or"),
        ({"class_weights": "1,-2"}, "positive numbers, one per class"),
        ({"class_weights": "sqrt", "problem_type": "single_label"}, "multi-label pos_weight"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, message):
    with pytest.raises(FinloraError, match=message):
        resolve_config(overrides)


def test_lists_from_flags():
    config = resolve_config({"labels": "neg, neu,pos", "use_lora": "False"})
    assert config.labels == ["neg", "neu", "pos"]
    assert config.use_lora is False


def test_every_offered_scheduler_is_one_transformers_knows():
    from transformers.trainer_utils import SchedulerType

    assert set(SCHEDULERS) <= {kind.value for kind in SchedulerType}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("# Caf\xe9\nepochs: 2\n".encode("latin-1"), "is not UTF-8 text; save it as UTF-8"),
        (b"batch_size:\n", "batch_size has no value"),
        (b"output_dir:\n", "output_dir has no value"),
        (b"1: 2\nfoo: 3\n", "unknown key.*1, foo"),
        (b"epochs: lots\n", "r.yaml: epochs: cannot read 'lots' as float"),
    ],
)
def test_bad_recipe_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(content)
    with pytest.raises(FinloraError, match=message) as caught:
        resolve_config({}, str(recipe))
    assert str(recipe) in str(caught.value) and "\n" not in str(caught.value)


def test_an_empty_optional_recipe_setting_means_its_default(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("epochs:\nrun_name:\n")
    config = resolve_config({}, str(recipe))
    assert config.epochs == 5.0 and config.run_name is None


@pytest.mark.parametrize("bootstrap", [0, -5, 99])
def test_a_bootstrap_too_small_for_an_interval_is_refused(bootstrap):
    with pytest.raises(FinloraError, match="--bootstrap must be at least 100"):
        CompareConfig(bootstrap=bootstrap)
