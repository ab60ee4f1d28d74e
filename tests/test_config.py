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


def test_train_config_is_composed_of_groups_each_validating_its_own_fields():
    from dataclasses import fields

    from finlora.config import GROUPS, DataSettings, LoraSettings, OptimSettings

    config = TrainConfig(dataset="phrasebank_allagree", output_dir="out", lora_r=8)
    assert config.learning_rate == 5e-4 and config.lora_r == 8  # flat, as before
    names = [f.name for cls, _ in GROUPS.values() for f in fields(cls)]
    assert sorted(names) == sorted(f.name for f in fields(TrainConfig))  # each field once
    assert config.groups()["lora"]["lora_r"] == 8
    assert isinstance(config.group("optim"), OptimSettings)
    with pytest.raises(FinloraError, match="--lora_dropout must be in"):
        LoraSettings(lora_dropout=2.0)
    with pytest.raises(FinloraError, match="not both"):
        DataSettings(data="x.csv", dataset="phrasebank_allagree")


def test_compare_and_profile_share_the_data_settings():
    from dataclasses import fields

    from finlora.config import SHARED_KEYS, DataSource, DataSplit, ProfileConfig

    assert issubclass(CompareConfig, DataSplit) and issubclass(ProfileConfig, DataSource)
    assert tuple(f.name for f in fields(DataSplit)) == SHARED_KEYS
    train_help = {f.name: f.metadata["help"] for f in fields(TrainConfig)}
    for cls in (CompareConfig, ProfileConfig):
        for f in fields(DataSource):
            assert (
                next(g for g in fields(cls) if g.name == f.name).metadata["help"]
                == (train_help[f.name])
            )


def test_a_recipe_may_be_nested_by_group(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  epochs: 2\n  max_length: 32\nlora:\n  lora_r: 4\nseed: 7\n")
    config = resolve_config({}, str(recipe))
    assert (config.epochs, config.max_length, config.lora_r, config.seed) == (2.0, 32, 4, 7)
    recipe.write_text("lora:\n  epochs: 2\n")
    with pytest.raises(FinloraError, match="epochs not in group lora"):
        resolve_config({}, str(recipe))


def test_the_saved_config_is_grouped_and_reads_back_the_same(tmp_path):
    from finlora.config import save_config

    config = resolve_config({"dataset": "claudette_tos", "epochs": "3"})
    save_config(config, tmp_path / "finlora_config.yaml")
    text = (tmp_path / "finlora_config.yaml").read_text()
    assert "# --- optim: training loop ---" in text and "preset: claudette_multilabel" in text
    assert resolve_config({}, str(tmp_path / "finlora_config.yaml")) == config


def test_a_named_dataset_brings_its_recipe_under_the_recipe_and_flags(tmp_path):
    """`finlora train --dataset claudette_tos` trains the measured legal recipe."""
    from finlora.config import PRESET_SKIPS, RECIPES_DIR

    legal = load_recipe(RECIPES_DIR / "claudette_multilabel.yaml")
    config = resolve_config({"dataset": "claudette_tos"})
    assert config.preset == "claudette_multilabel"
    for key, value in legal.items():
        if key not in PRESET_SKIPS:
            assert getattr(config, key) == value, key
    assert config.output_dir == TrainConfig().output_dir  # where stays the user's
    # flags > preset; a recipe > preset
    assert resolve_config({"dataset": "claudette_tos", "max_length": "128"}).max_length == 128
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset: claudette_tos\nepochs: 2\n")
    assert resolve_config({}, str(recipe)).epochs == 2.0
    # another strategy keeps its own learning rate and epochs
    lora = resolve_config({"dataset": "claudette_tos", "use_lora": "true"})
    assert (lora.use_lora, lora.learning_rate, lora.epochs, lora.max_length) == (
        True, 5e-4, 5.0, 256,
    )  # fmt: skip
    # --preset none: the generic defaults
    generic = resolve_config({"dataset": "claudette_tos", "preset": "none"})
    assert generic.preset == "none" and generic.max_length == TrainConfig().max_length
    with pytest.raises(FinloraError, match="--preset 'legal' is unknown"):
        resolve_config({"preset": "legal"})


@pytest.mark.parametrize("dataset", [None, "phrasebank_allagree", "phrasebank_50agree"])
@pytest.mark.parametrize("use_lora", ["true", "false"])
def test_phrasebank_presets_are_the_defaults(dataset, use_lora):
    given = {"use_lora": use_lora, **({"dataset": dataset} if dataset else {})}
    config = resolve_config(given)
    assert config.preset == ("phrasebank_lora" if use_lora == "true" else "phrasebank_full")
    plain = TrainConfig(dataset=dataset, use_lora=use_lora == "true")
    assert {**config.to_dict(), "preset": None} == plain.to_dict()


def test_own_data_gets_no_preset():
    assert resolve_config({"data": "mine.csv"}).preset is None


def test_packaged_recipes_are_found_from_any_directory(tmp_path, monkeypatch):
    from pathlib import Path

    import finlora.config as config_module

    monkeypatch.chdir(tmp_path)
    for path in ("config/phrasebank_lora.yaml", "phrasebank_lora", "phrasebank_lora.yaml"):
        assert resolve_config({}, path).output_dir == "outputs/pb_lora"  # the recipe's own
    repo = Path(__file__).resolve().parents[1]
    recipes = Path(config_module.__file__).parent / "recipes"
    assert (repo / "config").resolve() == recipes.resolve()  # config/ is the packaged folder
    assert '"recipes/*.yaml"' in (repo / "pyproject.toml").read_text()  # shipped as package data
