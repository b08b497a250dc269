"""Typed config: recipes, overrides, strict keys with suggestions, composition with base:."""
from __future__ import annotations

import pytest

from helpers import heads, loss_of, make_method
from jaxdistill import config
from jaxdistill.config import PretrainConfig
from jaxdistill.errors import UserError


def test_every_shipped_recipe_validates():
    for path in sorted(config.CONFIG_DIR.glob("*.yaml")):
        cfg = config.load(PretrainConfig, path)
        assert cfg.steps > 0 and cfg.batch_size > 0, path


def test_every_task_recipe_validates_and_builds_its_method():
    from jaxdistill.methods import build_method
    from jaxdistill.models.bert import Bert, BertConfig

    paths = sorted((config.CONFIG_DIR / "task").rglob("*.yaml"))
    assert len(paths) > 30
    # Shapes of the embedded pipeline: a 3x312 student under a 6x384 teacher.
    student = BertConfig(vocab_size=100, hidden_size=312, num_layers=3, num_heads=12,
                         intermediate_size=1200, head="classifier")
    teacher = BertConfig(vocab_size=100, hidden_size=384, num_layers=6, num_heads=12,
                         intermediate_size=1536, head="classifier")
    for path in paths:
        if path.stem.endswith("augment"):
            cfg = config.load(config.AugmentConfig, path)
            assert cfg.n >= 1 and cfg.task.name, path
            continue
        cfg = config.load(config.FinetuneConfig, path)
        assert cfg.steps > 0 or cfg.epochs > 0, path
        runtime = {k: v for k, v in cfg.student.architecture.items()
                   if k in Bert.RUNTIME_FIELDS}  # e.g. FastBERT's dropout-free backbone
        method = make_method(cfg.method.name, cfg.method.options, student.replace(**runtime),
                             teacher)
        assert heads(method)["student"] == "classifier", path


def test_default_is_demo_and_overrides_apply():
    cfg = config.load(PretrainConfig, None, ["steps=7", "mesh.data=2", "student.num_layers=4",
                                             "method.options.temperature=3", "learning_rate=1e-3"])
    assert cfg.run_dir == "runs/demo" and cfg.method.name == "tinybert"
    assert (cfg.steps, cfg.mesh.data, cfg.student.architecture["num_layers"]) == (7, 2, 4)
    assert cfg.method.options == {"stage": "general", "temperature": 3}
    assert cfg.learning_rate == pytest.approx(1e-3)


@pytest.mark.parametrize("override, needle", [
    ("stepz=3", "Did you mean 'steps'"),
    ("mesh.tensr=2", "Did you mean 'tensor'"),
    ("student.num_layer=2", "Did you mean 'num_layers'"),
    ("steps=many", "expected an integer"),
    ("export=maybe", "expected true or false"),
    ("steps", "key=value"),
])
def test_bad_overrides_name_the_problem(override, needle):
    with pytest.raises(UserError, match=needle):
        config.load(PretrainConfig, None, [override])


def test_unknown_key_in_yaml_suggests_closest(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: " + str(config.CONFIG_DIR / "demo.yaml") + "\nbatch_sise: 8\n")
    with pytest.raises(UserError, match="unknown key 'batch_sise'.*Did you mean 'batch_size'"):
        config.load(PretrainConfig, recipe)


def test_base_composition_and_method_switch(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: " + str(config.CONFIG_DIR / "demo.yaml") + "\n"
                      "student: {num_layers: 6}\nmethod: {name: distilbert}\n")
    cfg = config.load(PretrainConfig, recipe)
    assert cfg.student.architecture["num_layers"] == 6  # merged, not replaced
    assert cfg.student.architecture["hidden_size"] == 312
    assert cfg.method.options == {}  # the base's tinybert options do not leak into distilbert


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        config.load(PretrainConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        config.load(PretrainConfig, bad)


def test_dump_roundtrip(tmp_path):
    cfg = config.load(PretrainConfig, None, ["steps=9", "student.freeze=[encoder]"])
    config.dump(cfg, tmp_path / "c.yaml")
    assert config.load(PretrainConfig, tmp_path / "c.yaml") == cfg


def test_shorthand_for_teacher_path():
    cfg = config.from_dict(PretrainConfig, {"teacher": "/models/bert"})
    assert cfg.teacher.path == "/models/bert" and cfg.teacher.dtype == "bfloat16"
