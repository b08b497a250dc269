"""Typed config: recipes, overrides, strict keys with suggestions, composition with base:."""
from __future__ import annotations

import pytest

from helpers import heads, make_method
from jaxdistill import config, teacher_data
from jaxdistill.config import ExportConfig
from jaxdistill.errors import UserError
from jaxdistill.teacher_data.tang_augment import TangAugmentConfig
from jaxdistill.teacher_data.tinybert_augment import AugmentConfig
from jaxdistill.train import kinds
from jaxdistill.train.kinds.mlm_corpus import DataConfig, PretrainConfig
from jaxdistill.train.kinds.task import FinetuneConfig


def load_pretrain(path=None, overrides=()):
    return kinds.load("pretrain", path, overrides)[1]


def test_every_shipped_recipe_validates():
    from jaxdistill.methods import method_class, parse_options

    for path in sorted(config.CONFIG_DIR.glob("*.yaml")):
        cfg = load_pretrain(path)
        assert cfg.steps > 0 and cfg.batch_size > 0, path
        parse_options(method_class(cfg.method.name), cfg.method.options)  # e.g. phases


def test_every_task_recipe_validates_and_builds_its_method():
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
            cfg = teacher_data.load(path)[1]
            assert getattr(cfg, "n", getattr(cfg, "n_iter", 0)) >= 1 and cfg.task.name, path
            continue
        if config.read_yaml(path).get("method") == "ensemble":  # MT-DNN's soft targets
            cfg = teacher_data.load(path)[1]
            assert len(cfg.teachers) == 3 and cfg.task.name in cfg.out, path
            continue
        if config.read_yaml(path).get("method") == "cmlm_topk":  # C-MLM's teacher targets
            cfg = teacher_data.load(path)[1]
            assert (cfg.copies, cfg.top_k, cfg.task.name) == (7, 8, "wordnet_definitions"), path
            continue
        kind, cfg = kinds.load("finetune", path)
        assert (kind.name == "tasks") == (cfg.method.name == "mtdnn"), path
        assert cfg.steps > 0 or cfg.epochs > 0, path
        if cfg.method.name == "cmlm":  # a sequence-to-sequence task: a BERT MLM or a seq2seq
            from jaxdistill.methods import method_class, parse_options

            cls = method_class("cmlm")
            options = parse_options(cls, cfg.method.options)
            kind = {"teacher": "bert", "student": "seq2seq"}[options.stage]
            assert cfg.student.kind == kind and cfg.task.name == "wordnet_definitions", path
            assert cls.roles(options)["student"] == {"bert": "mlm", "seq2seq": "lm"}[kind], path
            continue
        runtime = {k: v for k, v in cfg.student.architecture.items()
                   if k in Bert.RUNTIME_FIELDS}  # e.g. FastBERT's dropout-free backbone
        method = make_method(cfg.method.name, cfg.method.options, student.replace(**runtime),
                             teacher)
        assert heads(method)["student"] == "classifier", path


def test_default_is_demo_and_overrides_apply():
    cfg = load_pretrain(None, ["steps=7", "mesh.data=2", "student.num_layers=4",
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
    ("export.format=tflite", "export.format='tflite' is out of range: it must be one of hf, onnx"),
    ("export.quantize=int8", "export.format: onnx"),
    ("export.format=onnx", "a general-distillation student exports as a Hugging Face directory"),
    ("steps", "key=value"),
])
def test_bad_overrides_name_the_problem(override, needle):
    with pytest.raises(UserError, match=needle):
        load_pretrain(None, [override])


def test_export_false_is_short_for_export_enabled_false():
    assert load_pretrain(None, ["export=false"]).export.enabled is False
    _, cfg = kinds.load("finetune", "configs/task/kd.yaml",
                        ["export=false", "export.format=onnx", "export.quantize=int8"])
    assert (cfg.export.enabled, cfg.export.format, cfg.export.quantize) == (False, "onnx", "int8")
    assert load_pretrain(None, []).export == ExportConfig()


# Every numeric or enumerated key has an accepted range, checked when the recipe loads.
BAD_VALUES = [
    (PretrainConfig, "steps=-5", "steps=-5", "[1, inf)"),
    (PretrainConfig, "steps=0", "steps=0", "[1, inf)"),
    (PretrainConfig, "learning_rate=-1", "learning_rate=-1.0", "(0, inf)"),
    (PretrainConfig, "save_every=0", "save_every=0", "[1, inf)"),
    (PretrainConfig, "log_every=0", "log_every=0", "[1, inf)"),
    (PretrainConfig, "batch_size=0", "batch_size=0", "[1, inf)"),
    (PretrainConfig, "seq_len=0", "seq_len=0", "[1, inf)"),
    (PretrainConfig, "seed=-1", "seed=-1", "[0, inf)"),
    (PretrainConfig, "keep_checkpoints=-1", "keep_checkpoints=-1", "[0, inf)"),
    (PretrainConfig, "optimizer.b1=1", "optimizer.b1=1.0", "[0, 1)"),
    (PretrainConfig, "optimizer.b2=-0.1", "optimizer.b2=-0.1", "[0, 1)"),
    (PretrainConfig, "optimizer.eps=0", "optimizer.eps=0.0", "(0, inf)"),
    (PretrainConfig, "optimizer.weight_decay=-0.01", "optimizer.weight_decay", "[0, inf)"),
    (PretrainConfig, "optimizer.grad_clip=-1", "optimizer.grad_clip", "[0, inf)"),
    (PretrainConfig, "optimizer.warmup_ratio=1.5", "optimizer.warmup_ratio", "[0, 1]"),
    (PretrainConfig, "optimizer.warmup_steps=-2", "optimizer.warmup_steps", "[-1, inf)"),
    (PretrainConfig, "optimizer.grad_accum=0", "optimizer.grad_accum=0", "[1, inf)"),
    (PretrainConfig, "optimizer.schedule=step", "optimizer.schedule", "linear, cosine"),
    (PretrainConfig, "optimizer.name=sgd", "optimizer.name", "adamw"),
    (PretrainConfig, "teacher.dtype=int8", "teacher.dtype", "float32, bfloat16"),
    (PretrainConfig, "data.mlm_probability=1", "data.mlm_probability", "(0, 1)"),
    (PretrainConfig, "data.max_documents=-3", "data.max_documents", "[0, inf)"),
    (FinetuneConfig, "steps=-1", "steps=-1", "[0, inf)"),
    (FinetuneConfig, "epochs=0", "epochs=0.0", "(0, inf)"),
    (FinetuneConfig, "eval_every=0", "eval_every=0", "[1, inf)"),
    (FinetuneConfig, "eval_batch_size=0", "eval_batch_size", "[1, inf)"),
    (FinetuneConfig, "select=worst", "select='worst'", "best, last"),
    (FinetuneConfig, "task.dev_split=1", "task.dev_split=1.0", "(0, 1)"),
    (FinetuneConfig, "task.max_train_examples=-1", "task.max_train_examples", "[0, inf)"),
    (AugmentConfig, "p_t=1.5", "p_t=1.5", "[0, 1]"),
    (AugmentConfig, "m=0", "m=0", "[1, inf)"),
    (TangAugmentConfig, "p_mask=-0.1", "p_mask=-0.1", "[0, 1]"),
    (TangAugmentConfig, "ngram_max=0", "ngram_max=0", "[1, inf)"),
]


@pytest.mark.parametrize("cls, override, key, accepted", BAD_VALUES,
                         ids=[f"{c.__name__}:{o}" for c, o, _, _ in BAD_VALUES])
def test_out_of_range_values_name_the_key_and_the_range(cls, override, key, accepted):
    writer = {AugmentConfig: "tinybert", TangAugmentConfig: "tang"}
    with pytest.raises(UserError) as err:
        if cls in writer:
            teacher_data.load(None, [f"method={writer[cls]}", override])
        else:
            kinds.load("pretrain" if cls is PretrainConfig else "finetune", None, [override])
    assert key in str(err.value) and accepted in str(err.value), str(err.value)


def test_every_range_table_names_real_fields_and_accepts_the_defaults():
    import dataclasses

    from jaxdistill.models import REGISTRY as MODEL_KINDS

    for cls in (PretrainConfig, FinetuneConfig, AugmentConfig, TangAugmentConfig,
                config.OptimizerConfig, DataConfig, config.TaskConfig, config.TeacherConfig,
                *(kind.Config for kind in kinds.REGISTRY.values()),
                *(spec.Config for spec in teacher_data.WRITERS.values()),
                *(model.Config for model in MODEL_KINDS.values())):
        names = {f.name for f in dataclasses.fields(cls)}
        assert set(getattr(cls, "_RANGES", {})) <= names, cls
        config.check_ranges(cls())  # the defaults are in range


# The model kinds' keys (student.*) have ranges too, checked when the recipe loads: each edge is
# exit 2 naming the key and its range, before any model is built (a traceback, a NaN run or a
# method's message about layer maps before).
MODEL_EDGES = [
    ("pretrain", None, "student.num_heads=0", "[1, inf)"),
    ("pretrain", None, "student.intermediate_size=-1", "[1, inf)"),
    ("pretrain", None, "student.hidden_size=0", "[1, inf)"),
    ("pretrain", None, "student.hidden_dropout=1.5", "[0, 1)"),
    ("pretrain", None, "student.num_layers=0", "[1, inf)"),
    ("pretrain", None, "student.dtype=int4", "float32, bfloat16"),
    ("pretrain", "configs/mobilebert_demo.yaml", "student.embedding_size=0", "[1, inf)"),
    ("pretrain", "configs/mobilebert_demo.yaml", "student.attention_dropout=-0.1", "[0, 1)"),
    ("finetune", "configs/task/bilstm_student.yaml", "student.hidden_size=0", "[1, inf)"),
    ("finetune", "configs/task/bilstm_student.yaml", "student.dropout=1.0", "[0, 1)"),
    ("finetune", "configs/task/cmlm_student.yaml", "student.d_model=0", "[1, inf)"),
    ("finetune", "configs/task/cmlm_student.yaml", "student.decoder_layers=0", "[1, inf)"),
    ("finetune", "configs/task/cmlm_student.yaml", "student.dropout=2", "[0, 1)"),
]


@pytest.mark.parametrize("command, recipe, override, accepted", MODEL_EDGES,
                         ids=[f"{r or c}:{o}" for c, r, o, _ in MODEL_EDGES])
def test_model_key_edges_exit_2_naming_the_key(command, recipe, override, accepted, capsys,
                                               tmp_path):
    from jaxdistill import cli

    args = [command, *(["--config", recipe] if recipe else []), override,
            f"run_dir={tmp_path / 'run'}"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert override.split("=")[0] in err and accepted in err, err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_keys_of_another_kind_are_errors_naming_the_kind():
    """A classification recipe that sets a sequence-to-sequence key does not run and ignore it."""
    with pytest.raises(UserError, match="unknown key 'decode'.*kind 'task'.*'decode' is a key "
                                        "of seq2seq runs"):
        kinds.load("finetune", "configs/task/kd.yaml", ["decode.beam_size=3"])
    with pytest.raises(UserError, match="unknown key 'data'.*kind 'task'.*mlm_corpus"):
        kinds.load("finetune", None, ["data.corpus=x.txt"])
    with pytest.raises(UserError, match="method 'tinybert' trains on a text corpus.*"
                                        "`jaxdistill pretrain`"):
        kinds.load("finetune", None, ["method.name=tinybert", "method.options.stage=general"])
    with pytest.raises(UserError, match="`jaxdistill finetune`"):
        kinds.load("pretrain", None, ["method.name=kd"])


def test_unknown_key_in_yaml_suggests_closest(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: " + str(config.CONFIG_DIR / "demo.yaml") + "\nbatch_sise: 8\n")
    with pytest.raises(UserError, match="unknown key 'batch_sise'.*Did you mean 'batch_size'"):
        load_pretrain(recipe)


def test_base_composition_and_method_switch(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: " + str(config.CONFIG_DIR / "demo.yaml") + "\n"
                      "student: {num_layers: 6}\nmethod: {name: distilbert}\n")
    cfg = load_pretrain(recipe)
    assert cfg.student.architecture["num_layers"] == 6  # merged, not replaced
    assert cfg.student.architecture["hidden_size"] == 312
    assert cfg.method.options == {}  # the base's tinybert options do not leak into distilbert


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_pretrain(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_pretrain(bad)


def test_dump_roundtrip(tmp_path):
    cfg = load_pretrain(None, ["steps=9", "student.freeze=[encoder]"])
    config.dump(cfg, tmp_path / "c.yaml")
    assert load_pretrain(tmp_path / "c.yaml") == cfg


def test_shorthand_for_teacher_path():
    cfg = config.from_dict(PretrainConfig, {"teacher": "/models/bert"})
    assert cfg.teacher.path == "/models/bert" and cfg.teacher.dtype == "bfloat16"
