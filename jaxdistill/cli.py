"""`jaxdistill` command line: parses, hands off to the library, turns bad input into exit 2."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from typing import Callable, Sequence

from jaxdistill.errors import UserError

EXIT_USAGE = 2
EXIT_DIVERGED = 3
FINETUNE_DEFAULT = "task/teacher.yaml"


def _keys_epilog(cls: type) -> str:
    from jaxdistill import config

    rows = "\n".join(f"  {k:<32} {v}" for k, v in config.keys(cls))
    return f"config keys (set in the YAML or as key=value; default shown):\n{rows}"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML recipe (default: configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. steps=100 mesh.data=4 student.num_layers=4")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from jaxdistill import config, distributed
    from jaxdistill.train import pretrain

    distributed.maybe_initialize()
    cfg = config.load(config.PretrainConfig, args.config, args.overrides)
    summary = pretrain.run(cfg)
    print(json.dumps(summary))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from jaxdistill import config, distributed
    from jaxdistill.train import finetune

    distributed.maybe_initialize()
    cfg = config.load(config.FinetuneConfig, args.config, args.overrides,
                      default=FINETUNE_DEFAULT)
    print(json.dumps(finetune.run(cfg)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from jaxdistill import config
    from jaxdistill.train import finetune

    cfg = config.load(config.FinetuneConfig, args.config, args.overrides,
                      default=FINETUNE_DEFAULT)
    if args.speeds is not None:
        from pathlib import Path

        from jaxdistill.inference import early_exit

        speeds = early_exit.parse_speeds(args.speeds)
        report_dir = args.report_dir or Path(args.model).expanduser().parent / "speed_sweep"
        report = early_exit.speed_sweep(args.model, cfg.task, cfg.seq_len, cfg.eval_batch_size,
                                        speeds, report_dir,
                                        latency_examples=args.latency_examples)
        print(json.dumps({k: report[k] for k in ("model", "task", "report", "plot")}
                         | {"rows": report["rows"]}))
        return 0
    if cfg.task.name in seq2seq_tasks():
        from jaxdistill.train import seq2seq

        print(json.dumps(seq2seq.evaluate_model(args.model, cfg, split=args.split,
                                                predictions=args.predictions)))
        return 0
    if args.split == "test":
        from jaxdistill.errors import UserError

        raise UserError("--split test: only sequence-to-sequence tasks have a test split here; "
                        "use dev or train.")
    if cfg.tasks or _is_multitask(args.model):
        from jaxdistill.train import multitask

        print(json.dumps(multitask.evaluate_model(args.model, cfg, args.predictions)))
        return 0
    print(json.dumps(finetune.evaluate_model(args.model, cfg.task, cfg.seq_len,
                                             cfg.eval_batch_size, split=args.split,
                                             predictions=args.predictions)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from jaxdistill import significance

    test = significance.compare_files(args.baseline, args.other)
    print(json.dumps({"baseline": args.baseline, "other": args.other, **test,
                      "verdict": significance.verdict(test, "points" if "ci95" in test
                                                      else "BLEU")}))
    return 0


def seq2seq_tasks() -> tuple[str, ...]:
    from jaxdistill.data.seq2seq import TASKS

    return TASKS


def _is_multitask(model_ref: str) -> bool:
    """A multi-task checkpoint (spans in its metadata) or its export (tasks.json)."""
    from pathlib import Path

    from jaxdistill import checkpoint
    from jaxdistill.errors import UserError

    path = Path(model_ref).expanduser()
    if (path / "tasks.json").is_file():
        return True
    try:
        return bool(checkpoint.read_meta(checkpoint.find_step_dir(path)).get("tasks"))
    except (UserError, OSError, ValueError):
        return False  # not a checkpoint: the single-task path names what is wrong


def cmd_augment(args: argparse.Namespace) -> int:
    from jaxdistill import config

    cfg = config.load_augment(args.config, args.overrides)
    if isinstance(cfg, config.TangAugmentConfig):
        from jaxdistill.teacher_data import tang_augment as augment
    elif isinstance(cfg, config.EnsembleTargetsConfig):
        from jaxdistill.teacher_data import ensemble as augment
    elif isinstance(cfg, config.CmlmTopKConfig):
        from jaxdistill.teacher_data import cmlm_topk as augment
    else:
        from jaxdistill.teacher_data import tinybert_augment as augment
    print(json.dumps(augment.run(cfg)))
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from jaxdistill import config
    from jaxdistill.loading import tokenizer_of
    from jaxdistill.train import pretrain

    cfg = config.load(config.PretrainConfig, args.config, args.overrides)
    out = pretrain.prepare_data(cfg, tokenizer_of(cfg.teacher.path))
    print(json.dumps({"prepared_dir": str(out)}))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from jaxdistill import checkpoint, models
    from jaxdistill.train.loop import export_checkpoint

    step_dir = checkpoint.find_step_dir(args.checkpoint)
    out = export_checkpoint(step_dir, args.out)
    model = models.from_meta(checkpoint.read_meta(step_dir)["model"], where=str(step_dir))
    print(json.dumps({"hf_dir": str(out), "kind": model.kind,
                      "architecture": getattr(model.config, "flavor", model.kind),
                      "head": model.config.head}))
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


def build_parser() -> argparse.ArgumentParser:
    from jaxdistill.config import (AugmentConfig, CmlmTopKConfig, EnsembleTargetsConfig,
                                   FinetuneConfig,
                                   PretrainConfig, TangAugmentConfig)

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
                       formatter_class=fmt, epilog=_keys_epilog(PretrainConfig))
    _add_config_args(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("finetune", help="task stage: fine-tune or distil on a labeled task",
                       formatter_class=fmt, epilog=_keys_epilog(FinetuneConfig))
    p.add_argument("--config", help=f"YAML recipe (default: configs/{FINETUNE_DEFAULT})")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. steps=100 task.name=sst2 method.name=kd")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("evaluate", help="a classifier (checkpoint or HF dir) on a task's dev set; "
                                        "a seq2seq student: BLEU and sample outputs",
                       formatter_class=fmt, epilog=_keys_epilog(FinetuneConfig))
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
                       epilog=_keys_epilog(AugmentConfig) + "\n\nwith method: tang\n"
                       + _keys_epilog(TangAugmentConfig) + "\n\nwith method: ensemble\n"
                       + _keys_epilog(EnsembleTargetsConfig) + "\n\nwith method: cmlm_topk\n"
                       + _keys_epilog(CmlmTopKConfig))
    p.add_argument("--config", help="YAML recipe (default: configs/task/augment.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. n=4 p_t=0.4")
    p.set_defaults(func=cmd_augment)

    p = sub.add_parser("prepare-data", help="tokenize a corpus into training shards",
                       formatter_class=fmt, epilog=_keys_epilog(PretrainConfig))
    _add_config_args(p)
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("export", help="checkpoint -> Hugging Face directory")
    p.add_argument("--checkpoint", required=True,
                   help="run dir (latest step), checkpoints dir, or one step dir")
    p.add_argument("--out", required=True, help="output Hugging Face directory")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="Hugging Face directory -> Orbax checkpoint")
    p.add_argument("--hf", required=True, help="Hugging Face model directory")
    p.add_argument("--out", required=True, help="output directory (run-dir layout)")
    p.set_defaults(func=cmd_import)
    return parser


def _fail(message: str, code: int) -> int:
    print("error: " + textwrap.fill(" ".join(message.split()), width=100), file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
