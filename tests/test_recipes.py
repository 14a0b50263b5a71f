"""Recipes (`modeling/recipes_nextlocllm.py`): the default builds the recommended model, `paper` the authors' one, an
explicit value wins over the recipe's, the config records the recipe, and `train.py --help` shows every default."""

import sys
from dataclasses import fields
from pathlib import Path

import pytest
from conftest import save_tiny_backbone

from nextlocllm_hf import NextLocLLMConfig, NextLocLLMForCoordinateRegression
from nextlocllm_hf.modeling.configuration_nextlocllm import DEFAULT_POI_CLASS_NAMES
from nextlocllm_hf.modeling.recipes_nextlocllm import DEFAULT_RECIPE, RECIPES, get_recipe

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import train as train_script  # noqa: E402

# train.py's defaults before recipes existed: the paper recipe must give exactly these.
OLD_TRAINING_DEFAULTS = {"learning_rate": 2e-4, "ranker_feature_path_learning_rate": None, "epochs": 10,
                         "per_device_batch_size": 32, "warm_start_epochs": 30, "warm_start_patience": 6}
REQUIRED = ["--dataset", "data/x", "--output_dir", "runs/x"]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    return save_tiny_backbone(tmp_path_factory.mktemp("recipes") / "tiny")


def test_every_recipe_sets_the_same_config_fields_and_train_options():
    names = {field.name for field in fields(NextLocLLMConfig)}
    first = next(iter(RECIPES.values()))
    for recipe in RECIPES.values():
        assert recipe.config.keys() == first.config.keys() and recipe.training.keys() == first.training.keys()
        assert set(recipe.config) <= names and "task_mode" not in recipe.config  # the task is the user's question
        assert not set(recipe.training) & names
    assert DEFAULT_RECIPE == "ranker"


def test_the_paper_recipe_is_the_old_default_model_and_run():
    paper = get_recipe("paper")
    assert {key: getattr(NextLocLLMConfig, key) for key in paper.config} == dict(paper.config)
    assert dict(paper.training) == OLD_TRAINING_DEFAULTS
    args = train_script.parse_args([*REQUIRED, "--recipe", "paper"])
    assert {key: getattr(args, key) for key in OLD_TRAINING_DEFAULTS} == OLD_TRAINING_DEFAULTS
    assert (args.head_type, args.regression_target, args.num_backbone_layers, args.candidate_history) == (
        "point", "absolute", 6, False)


def test_the_recommended_recipe_is_the_measured_ranker():
    ranker = get_recipe("ranker")
    assert dict(ranker.config) == {"regression_target": "offset_from_last", "head_type": "point_ranker",
                                   "candidate_loss_weight": 10000.0, "candidate_history": True, "max_candidates": 96,
                                   "num_backbone_layers": 2}
    assert {key: ranker.training[key] for key in ("learning_rate", "ranker_feature_path_learning_rate", "epochs",
                                                  "per_device_batch_size")} == {
        "learning_rate": 1e-3, "ranker_feature_path_learning_rate": 1e-4, "epochs": 1, "per_device_batch_size": 32}


def test_an_unknown_recipe_is_refused_by_name():
    with pytest.raises(ValueError, match=r"recipe='best': expected one of \('ranker', 'paper'\)"):
        get_recipe("best")
    with pytest.raises(ValueError, match=r"NextLocLLMConfig.recipe='best': expected None or one of"):
        NextLocLLMConfig(recipe="best")


def test_train_defaults_to_the_recommended_recipe_and_explicit_options_win():
    args = train_script.parse_args(REQUIRED)
    assert args.recipe == "ranker" and args.task_mode == "next"
    assert {key: getattr(args, key) for key in get_recipe("ranker").values()} == get_recipe("ranker").values()
    args = train_script.parse_args([*REQUIRED, "--learning_rate", "5e-4", "--no_candidate_history", "--epochs", "3",
                                    "--num_backbone_layers", "4", "--warm_start_patience", "2"])
    assert (args.learning_rate, args.candidate_history, args.epochs, args.num_backbone_layers,
            args.warm_start_patience) == (5e-4, False, 3, 4, 2)
    assert args.head_type == "point_ranker" and args.ranker_feature_path_learning_rate == 1e-4  # the rest: the recipe's
    args = train_script.parse_args([*REQUIRED, "--recipe", "paper", "--candidate_history", "--head_type",
                                    "point_ranker"])
    assert (args.candidate_history, args.head_type, args.learning_rate) == (True, "point_ranker", 2e-4)


def test_train_refuses_contradicting_history_flags_and_unknown_recipes(capsys):
    for extra in (["--candidate_history", "--no_candidate_history"], ["--recipe", "best"]):
        with pytest.raises(SystemExit):
            train_script.parse_args([*REQUIRED, *extra])
    errors = capsys.readouterr().err
    assert "not allowed with argument --candidate_history" in errors and "invalid choice: 'best'" in errors


def test_help_shows_every_default_and_the_recipes(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per option: each option's text is found whole
    with pytest.raises(SystemExit):
        train_script.parse_args(["--help"])
    text = capsys.readouterr().out
    for name, recipe in RECIPES.items():
        assert f"  {name}  " in text and recipe.summary in text
    options, current = [], None  # each option's lines, joined: its invocation, then its help
    for line in text.splitlines():
        if line.startswith("  --"):
            current = [line.strip()]
            options.append(current)
        elif current is not None and line.startswith("   "):
            current.append(line.strip())
        else:
            current = None
    options = [" ".join(lines) for lines in options]
    required = ("--dataset", "--output_dir")
    shown = [line for line in options if not line.startswith(required)]
    assert len(shown) > 40 and all("(default: " in line or "(recipe: " in line for line in shown), [
        line for line in shown if "(default: " not in line and "(recipe: " not in line]
    learning_rate = next(line for line in options if line.startswith("--learning_rate"))
    assert learning_rate.endswith("(recipe: ranker 0.001, paper 0.0002)")
    assert any(line.startswith("--task_mode") and line.endswith("(default: next)") for line in options)


def test_from_backbone_applies_a_recipe_and_keywords_win(backbone):
    model = NextLocLLMForCoordinateRegression.from_backbone(backbone, history_length=8, current_length=3)
    config = model.config
    assert config.recipe == "ranker" and config.task_mode == "next"
    assert {key: getattr(config, key) for key in get_recipe("ranker").config} == get_recipe("ranker").config
    assert len(model.backbone.layers if hasattr(model.backbone, "layers") else model.backbone.h) == 2

    mine = NextLocLLMForCoordinateRegression.from_backbone(backbone, recipe="ranker", history_length=8,
                                                           current_length=3, candidate_history=False,
                                                           num_backbone_layers=1, task_mode="at_time")
    assert (mine.config.recipe, mine.config.candidate_history, mine.config.num_backbone_layers,
            mine.config.task_mode, mine.config.head_type) == ("ranker", False, 1, "at_time", "point_ranker")

    paper = NextLocLLMForCoordinateRegression.from_backbone(backbone, recipe="paper", num_backbone_layers=2,
                                                            history_length=8, current_length=3)
    by_hand = NextLocLLMForCoordinateRegression.from_backbone(backbone, recipe=None, num_backbone_layers=2,
                                                              history_length=8, current_length=3)
    assert (paper.config.recipe, by_hand.config.recipe) == ("paper", None)
    paper_diff, hand_diff = paper.config.to_diff_dict(), by_hand.config.to_diff_dict()
    assert {key: value for key, value in paper_diff.items() if hand_diff.get(key) != value} == {"recipe": "paper"}
    saved_before_recipes = {key: value for key, value in hand_diff.items() if key != "recipe"}
    assert NextLocLLMConfig.from_dict(saved_before_recipes).recipe is None
    with pytest.raises(ValueError, match="recipe='best'"):
        NextLocLLMForCoordinateRegression.from_backbone(backbone, recipe="best")


def test_the_recipe_survives_save_and_load(backbone, tmp_path):
    model = NextLocLLMForCoordinateRegression.from_backbone(backbone, recipe="paper", num_backbone_layers=1,
                                                            history_length=8, current_length=3)
    model.save_pretrained(tmp_path)
    assert NextLocLLMConfig.from_pretrained(tmp_path).recipe == "paper"


def test_train_builds_the_model_its_recipe_and_options_describe(backbone, tmp_path):
    metadata = {"history_length": 8, "current_length": 3, "poi_classes": list(DEFAULT_POI_CLASS_NAMES)}
    args = train_script.parse_args(["--dataset", "x", "--output_dir", str(tmp_path), "--backbone", backbone,
                                    "--max_candidates", "40", "--task_mode", "at_time"])
    config = train_script.build_model(args, metadata).config
    assert (config.recipe, config.head_type, config.candidate_history, config.max_candidates, config.task_mode,
            config.num_backbone_layers) == ("ranker", "point_ranker", True, 40, "at_time", 2)
