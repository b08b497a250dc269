"""`jaxdistill` command line: parses, hands off to the library, turns bad input into exit 2."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
from typing import Callable, Sequence

from jaxdistill.errors import UserError

EXIT_USAGE = 2
EXIT_DIVERGED = 3
FINETUNE_DEFAULT = "task/teacher.yaml"


def _keys_rows(cls: type, skip: tuple[str, ...] = ()) -> str:
    from jaxdistill import config
    from jaxdistill.models import model_class

    def architecture(kind: str) -> list[tuple[str, object]]:
        return [(f.name, f.default) for f in dataclasses.fields(model_class(kind).Config)
                if f.name not in config.SET_ELSEWHERE]

    return "\n".join(f"  {k:<32} {v}" for k, v in config.keys(cls, architecture=architecture)
                     if not k.startswith(skip))


def _keys_epilog(command: str) -> str:
    """The keys of every kind of training data `command` runs, for --help."""
    from jaxdistill.config import TaskRunConfig
    from jaxdistill.train import kinds

    head = "config keys (set in the YAML or as key=value; default shown)"
    own = [k for k in kinds.REGISTRY.values() if (k.command == "pretrain") == (command in (
        "pretrain", "prepare-data"))]
    if len(own) == 1:
        return f"{head}:\n{_keys_rows(own[0].Config)}"
    shared = tuple(f.name for f in dataclasses.fields(TaskRunConfig))
    parts = [f"{head}, every kind of training data:\n{_keys_rows(TaskRunConfig)}"]
    for kind in own:
        parts.append(f"with a method that trains on {kind.what} (kind '{kind.name}'):\n"
                     f"{_keys_rows(kind.Config, skip=shared)}")
    return "\n\n".join(parts)


def _writers_epilog() -> str:
    from jaxdistill.teacher_data.base import WRITERS

    return "\n\n".join(f"with method: {name} (configs/{spec.recipe})\n{_keys_rows(spec.Config)}"
                       for name, spec in WRITERS.items())


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML recipe (default: configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. steps=100 mesh.data=4 student.num_layers=4")


def _train(command: str, args: argparse.Namespace) -> int:
    from jaxdistill import distributed
    from jaxdistill.train import kinds

    distributed.maybe_initialize()
    kind, cfg = kinds.load(command, args.config, args.overrides)
    print(json.dumps(kind.run(cfg)))
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    return _train("pretrain", args)


def cmd_finetune(args: argparse.Namespace) -> int:
    return _train("finetune", args)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from jaxdistill.train import kinds

    kind, cfg = kinds.base.load_for_evaluate(args.model, args.config, args.overrides)
    request = kinds.EvaluateRequest(args.model, args.split, args.predictions, args.speeds,
                                    args.report_dir, args.latency_examples)
    print(json.dumps(kind.evaluate(cfg, request)))
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from jaxdistill import pipeline

    recipe = pipeline.load(args.file, args.overrides)
    only = [s for s in (args.only or "").split(",") if s]
    try:
        results = pipeline.run(recipe, only=only, start=args.start)
    except pipeline.StageFailed as e:
        return _fail(str(e), e.code)
    print(json.dumps({"root": results["root"], "results": f"{results['root']}/results.md",
                      "total_seconds": results["total_seconds"]}))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from jaxdistill import significance

    test = significance.compare_files(args.baseline, args.other)
    print(json.dumps({"baseline": args.baseline, "other": args.other, **test,
                      "verdict": significance.verdict(test, "points" if "ci95" in test
                                                      else "BLEU")}))
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from jaxdistill import teacher_data

    spec, cfg = teacher_data.load(args.config, args.overrides)
    print(json.dumps(spec.run(cfg)))
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from jaxdistill.loading import tokenizer_of
    from jaxdistill.train import kinds
    from jaxdistill.train.kinds import mlm_corpus

    _, cfg = kinds.load("pretrain", args.config, args.overrides)
    out = mlm_corpus.prepare_data(cfg, tokenizer_of(cfg.teacher.path))
    print(json.dumps({"prepared_dir": str(out)}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from jaxdistill import checkpoint, models
    from jaxdistill.inference import onnx_export
    from jaxdistill.train.loop import export_checkpoint

    onnx_export.check_request(args.format, args.quantize)
    step_dir = checkpoint.find_step_dir(args.checkpoint)
    model = models.from_meta(checkpoint.read_meta(step_dir)["model"], where=str(step_dir))
    head = {"kind": model.kind, "architecture": getattr(model.config, "flavor", model.kind),
            "head": model.config.head}
    if args.format == "onnx":
        report = onnx_export.export(str(step_dir), args.out, args.quantize,
                                    write_hf=lambda d: export_checkpoint(step_dir, d))
        print(json.dumps({**report, **head}))
        return 0
    print(json.dumps({"hf_dir": str(export_checkpoint(step_dir, args.out)), **head}))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from jaxdistill import checkpoint
    from jaxdistill.convert import read_model_dir

    src = Path(args.hf)
    model, params = read_model_dir(src)
    step_dir = checkpoint.save_model(args.out, model, params, tokenizer_dir=src, source=str(src))
    print(json.dumps({"checkpoint": str(step_dir), "kind": model.kind,
                      "architecture": getattr(model.config, "flavor", model.kind),
                      "head": model.config.head}))
    return 0


def build_parser(keys_help: bool = True) -> argparse.ArgumentParser:
    """The parser; `keys_help` False leaves out the key listings of --help (they import the
    kinds of data and the teacher-data writers, seconds a training command need not spend)."""
    epilog = _keys_epilog if keys_help else (lambda command: None)
    parser = argparse.ArgumentParser(
        prog="jaxdistill",
        description="Distil BERT-family models with JAX: general distillation, task stage, "
                    "Hugging Face import/export.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            With no flags, `jaxdistill pretrain` runs configs/demo.yaml: TinyBERT general
            distillation of the packaged MiniLM teacher on packaged IMDB text, then exports
            the student to runs/demo/hf."""))
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("pretrain", help="general distillation (TinyBERT, DistilBERT)",
                       formatter_class=fmt, epilog=epilog("pretrain"))
    _add_config_args(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="task stage: fine-tune or distil on a labeled task",
                       formatter_class=fmt, epilog=epilog("finetune"))
    p.add_argument("--config", help=f"YAML recipe (default: configs/{FINETUNE_DEFAULT})")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. steps=100 task.name=sst2 method.name=kd")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="a classifier (checkpoint or HF dir) on a task's dev set; "
                                        "a seq2seq student: BLEU and sample outputs",
                       formatter_class=fmt, epilog=epilog("evaluate"))
    p.add_argument("--model", required=True,
                   help="finetune run dir, its best/ dir, an Orbax step dir or a HF directory")
    p.add_argument("--split", choices=("dev", "train", "test"), default="dev",
                   help="test: sequence-to-sequence tasks only (their fixed test split)")
    p.add_argument("--speeds", help="FastBERT adaptive inference: comma-separated exit "
                                    "thresholds, e.g. 0,0.1,0.3,0.5,0.8 (0 = the full model); "
                                    "writes report.json and speed_sweep.png")
    p.add_argument("--report-dir", help="where --speeds writes its report (default: "
                                        "speed_sweep/ beside the model directory)")
    p.add_argument("--latency-examples", type=int, default=256,
                   help="dev examples timed one at a time for the batch-1 figures (default 256)")
    p.add_argument("--predictions", metavar="FILE",
                   help="write every example's label and prediction (a seq2seq student: source, "
                        "reference, output) to FILE, JSON Lines, for `jaxdistill compare`")
    p.add_argument("--config", help=f"recipe giving task.*, seq_len, eval_batch_size "
                                    f"(default: configs/{FINETUNE_DEFAULT})")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. task.name=sst2")
    p.set_defaults(func=cmd_evaluate)

    _add_data_and_model_commands(sub, keys_help)
    return parser


def _add_data_and_model_commands(sub, keys_help: bool) -> None:
    """pipeline, compare, augment, prepare-data, export, import."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("pipeline", help="a method's whole recipe: its stages (pretrain, finetune, "
                                        "augment, evaluate, export) in order, one command",
                       formatter_class=fmt, description=_pipeline_doc())
    p.add_argument("file", help="pipeline recipe, e.g. configs/pipelines/kd.yaml")
    p.add_argument("overrides", nargs="*", metavar="stage.key=value",
                   help="a key of one stage (teacher.steps=100), or root=DIR")
    p.add_argument("--only", help="comma-separated stages to run again (the others are read "
                                  "from what they wrote)")
    p.add_argument("--from", dest="start", metavar="STAGE",
                   help="run this stage and every later one again")
    p.set_defaults(func=cmd_pipeline)
    p = sub.add_parser("compare", help="paired significance test of two models on the same "
                                       "examples: McNemar + bootstrap interval for accuracy, "
                                       "sacreBLEU's paired bootstrap for BLEU")
    p.add_argument("baseline", help="`evaluate --predictions` file of the baseline model")
    p.add_argument("other", help="the other model's file, same task and split")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("augment", help="teacher-made training sets of a task: TinyBERT's "
                                       "augmentation; method=tang: Tang et al.'s, teacher-"
                                       "labelled; method=ensemble: MT-DNN's soft targets; "
                                       "method=cmlm_topk: C-MLM's top-K teacher logits",
                       formatter_class=fmt,
                       epilog=_writers_epilog() if keys_help else None)
    p.add_argument("--config", help="YAML recipe (default: configs/task/augment.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. n=4 p_t=0.4")
    p.set_defaults(func=cmd_augment)

    p = sub.add_parser("prepare-data", help="tokenize a corpus into training shards",
                       formatter_class=fmt,
                       epilog=_keys_epilog("prepare-data") if keys_help else None)
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("export", help="checkpoint -> Hugging Face directory (or ONNX)")
    p.add_argument("--checkpoint", required=True,
                   help="run dir (latest step), checkpoints dir, or one step dir")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="hf", metavar="{hf,onnx}",
                   help="hf: a Hugging Face directory for PyTorch (default); onnx: ONNX files "
                        "for ONNX Runtime with the config and tokenizer, checked against the JAX "
                        "model on real sentences")
    p.add_argument("--quantize", default="", metavar="int8",
                   help="with --format onnx: also write ONNX Runtime's dynamic int8 model")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="Hugging Face directory -> Orbax checkpoint")
    p.add_argument("--hf", required=True, help="Hugging Face model directory")
    p.add_argument("--out", required=True, help="output directory (run-dir layout)")
    p.set_defaults(func=cmd_import)


def _pipeline_doc() -> str:
    from jaxdistill import pipeline

    return pipeline.__doc__ or ""


def _fail(message: str, code: int) -> int:
    print("error: " + textwrap.fill(" ".join(message.split()), width=100), file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(keys_help=any(a in ("-h", "--help") for a in argv))
    args = parser.parse_args(argv)
    from jaxdistill.hostmem import tune_malloc

    tune_malloc()
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except UserError as e:
        if args.debug:
            raise
        return _fail(str(e), EXIT_USAGE)
    except Exception as e:
        from jaxdistill.train.loop import TrainingDiverged

        if isinstance(e, TrainingDiverged) and not args.debug:
            return _fail(str(e), EXIT_DIVERGED)
        raise


if __name__ == "__main__":
    sys.exit(main())
