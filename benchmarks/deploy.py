"""Deployment: each classifier as the JAX model, in ONNX Runtime fp32 and in ONNX Runtime int8
(dynamic quantization), side by side in one process; and a Seq2Seq student's greedy decoding in
ONNX Runtime against `jaxdistill evaluate`'s.

  python -m benchmarks.deploy \\
      --model teacher=runs/pipeline/task_teacher/best \\
      --model "TinyBERT 3x384=runs/pipeline/task_tb_glove_pred/best" \\
      --model "MobileBERT student=runs/task_mobilebert/best" \\
      --seq2seq runs/cmlm_student/best --out benchmarks/results/deploy

Every model is exported with `jaxdistill export --format onnx --quantize int8`'s code (which
checks fp32 logits against JAX's within 1e-4 first). Dev accuracy comes from one pass over the
whole dev set at batch 128. Speed: examples/s at batch 128 over the dev set and at batch 1 over
its first 256 examples (no padding rows); every (model, runtime, batch) is compiled or warmed up
first, then the timed passes go round all of them in turn so that a slow minute of a shared CPU
hits each alike; each figure is the median of its passes. Writes OUT.json and OUT.md; the ONNX
files go to --exports (runs/deploy_onnx).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

BATCH_1_EXAMPLES = 256


def _ort_logits(session, names: list[str], arrays: dict, batch_size: int
                ) -> tuple[np.ndarray, float]:
    out, seconds = [], 0.0
    n = len(arrays["input_ids"])
    for start in range(0, n, batch_size):
        feed = {k: arrays[k][start:start + batch_size].astype(np.int64) for k in names}
        t0 = time.perf_counter()
        out.append(session.run(["logits"], feed)[0])
        seconds += time.perf_counter() - t0
    return np.concatenate(out), seconds


def classifier_runners(name: str, ref: str, task, seq_len: int, out: Path) -> dict:
    """{runtime: fn(arrays, batch_size) -> (logits, seconds)} for one model, and its export."""
    import jax

    from jaxdistill.inference import onnx_export
    from jaxdistill.train.kinds import task as finetune
    from jaxdistill.train.loop import export_checkpoint

    model, arrays, predict, batch_sh, params, mesh = finetune.load_classifier(ref, task, seq_len)
    report = onnx_export.export(ref, out, "int8", write_hf=lambda d: export_checkpoint(ref, d))
    names = report["inputs"]
    sessions = {f: onnx_export.session(out / f) for f in ("model.onnx", "model_int8.onnx")}

    def jax_run(data, batch_size):
        with mesh:
            return finetune.set_logits(predict, batch_sh, params, data, batch_size)

    runners = {"JAX": jax_run,
               "ONNX Runtime fp32": lambda d, b: _ort_logits(sessions["model.onnx"], names, d, b),
               "ONNX Runtime int8": lambda d, b: _ort_logits(sessions["model_int8.onnx"], names,
                                                             d, b)}
    params_count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return {"runners": runners, "arrays": arrays, "export": report, "parameters": params_count,
            "kind": model.kind}


def measure_classifiers(models: list[tuple[str, str]], recipe: str, passes: int, out: Path
                        ) -> dict:
    from jaxdistill.data import tasks
    from jaxdistill.data.tasks.metrics import score_logits
    from jaxdistill.significance import paired_accuracy
    from jaxdistill.train import kinds

    _, cfg = kinds.load("evaluate", recipe)
    task = tasks.load_task(cfg.task)
    built = {name: classifier_runners(name, ref, task, cfg.seq_len, out / _slug(name))
             for name, ref in models}
    jobs = {}  # (model, runtime, batch) -> (fn, data, batch)
    rows, correct = [], {}
    for name, b in built.items():
        full = b["arrays"]
        first = {k: v[:BATCH_1_EXAMPLES] for k, v in full.items()}
        for runtime, fn in b["runners"].items():
            logits, _ = fn(full, 128)  # also compiles / warms up batch 128
            fn({k: v[:2] for k, v in first.items()}, 1)
            metrics = score_logits(logits, full["labels"], task.num_labels, task.metrics)
            rows.append({"model": name, "runtime": runtime, "parameters": b["parameters"],
                         **{f"dev_{k}": v for k, v in metrics.items()}})
            correct[(name, runtime)] = logits.argmax(-1) == full["labels"]
            jobs[(name, runtime, 128)] = (fn, full, 128)
            jobs[(name, runtime, 1)] = (fn, first, 1)
    rates: dict = {key: [] for key in jobs}
    for _ in range(passes):
        for key, (fn, data, batch) in jobs.items():
            logits, seconds = fn(data, batch)
            rates[key].append(len(logits) / max(seconds, 1e-9))
    for row in rows:
        if row["runtime"] != "JAX":  # each runtime against the JAX model, the same examples
            row["vs_jax"] = paired_accuracy(correct[(row["model"], "JAX")],
                                            correct[(row["model"], row["runtime"])])
        for batch in (1, 128):
            r = rates[(row["model"], row["runtime"], batch)]
            row[f"examples_per_sec_batch_{batch}"] = statistics.median(r)
            row[f"passes_batch_{batch}"] = r
    return {"task": task.name, "dev_examples": len(task.dev), "seq_len": cfg.seq_len,
            "metric": task.select_metric, "passes": passes, "rows": rows,
            "exports": {name: b["export"] for name, b in built.items()}}


def measure_seq2seq(ref: str, recipe: str, passes: int, out: Path, pairs_limit: int) -> dict:
    """Greedy decoding of the dev pairs by `jaxdistill evaluate`'s generator and in ONNX Runtime:
    sentences/s (median of passes) and how many outputs are identical."""
    import jax

    from jaxdistill import config as config_lib, loading, sharding
    from jaxdistill.data import seq2seq as s2s
    from jaxdistill.inference import generate as gen, onnx_export
    from jaxdistill.train import kinds
    from jaxdistill.train.loop import export_checkpoint

    _, cfg = kinds.load("evaluate", recipe)
    model, params, tok = loading.load_pretrained(ref)
    pairs = s2s.load_task(cfg.task).split("dev")[:pairs_limit]
    arrays = s2s.encode_pairs(pairs, tok, cfg.seq_len, cfg.target_len)
    batch = cfg.eval_batch_size
    report = onnx_export.export(ref, out / "seq2seq", "",
                                write_hf=lambda d: export_checkpoint(ref, d))
    mesh = sharding.make_mesh(config_lib.MeshConfig())
    params_sh = sharding.shardings_for(model.logical_axes(), params, mesh)
    placed = jax.device_put(params, params_sh)
    generate, batch_sh = gen.make_generate(model, params_sh, mesh, cfg.target_len)
    enc, dec = (onnx_export.session(out / "seq2seq" / f)
                for f in ("encoder_model.onnx", "decoder_model.onnx"))
    c = model.config
    ids = dict(max_len=cfg.target_len, start_id=c.decoder_start_token_id, eos_id=c.eos_token_id,
               pad_id=c.pad_token_id)

    def jax_pass():
        with mesh:
            texts, speed = gen.generate_texts(generate, batch_sh, placed, arrays, batch, tok)
        return texts, speed["sentences_per_sec"]

    def ort_pass():
        out_tokens, seconds = [], 0.0
        for start in range(0, len(pairs), batch):
            part = {k: arrays[k][start:start + batch] for k in ("input_ids", "attention_mask")}
            t0 = time.perf_counter()
            out_tokens.append(onnx_export.greedy_onnx(enc, dec, part, **ids))
            seconds += time.perf_counter() - t0
        tokens = np.concatenate(out_tokens)
        return gen.detokenize(tok, tokens), len(tokens) / seconds

    jax_pass()  # compile
    rates = {"JAX": [], "ONNX Runtime fp32": []}
    for _ in range(passes):
        jax_texts, r = jax_pass()
        rates["JAX"].append(r)
        ort_texts, r = ort_pass()
        rates["ONNX Runtime fp32"].append(r)
    return {"model": ref, "pairs": len(pairs), "batch_size": batch, "max_len": cfg.target_len,
            "identical_outputs": sum(a == b for a, b in zip(jax_texts, ort_texts)),
            "sentences_per_sec": {k: statistics.median(v) for k, v in rates.items()},
            "passes": rates, "export": report,
            "note": "ONNX Runtime's decoder re-reads the whole prefix each step (no cache); "
                    "the JAX decoder keeps a key/value cache"}


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower()


def render(result: dict, command: str) -> str:
    from jaxdistill.significance import verdict

    c = result["classifiers"]
    metric = f"dev_{c['metric']}"
    teacher = next(r[metric] for r in c["rows"] if r["runtime"] == "JAX")
    lines = [f"Produced by `{command}` on {result['machine']}, {result['date']}. Task "
             f"{c['task']}, {c['dev_examples']} dev examples, seq_len {c['seq_len']}; speed: "
             f"median of {c['passes']} passes, all runtimes timed in turn in one process.", "",
             f"| model | runtime | parameters | dev {c['metric']} | share of teacher | "
             f"against JAX (paired, same examples) | examples/s, batch 1 | "
             f"examples/s, batch 128 |",
             "|---|---|---:|---:|---:|---|---:|---:|"]
    for r in c["rows"]:
        paired = verdict(r["vs_jax"]) if "vs_jax" in r else "-"
        lines.append(f"| {r['model']} | {r['runtime']} | {r['parameters'] / 1e6:.1f} M | "
                     f"{r[metric]:.4f} | {100 * r[metric] / teacher:.1f}% | {paired} | "
                     f"{r['examples_per_sec_batch_1']:.1f} | "
                     f"{r['examples_per_sec_batch_128']:.1f} |")
    s = result.get("seq2seq")
    if s:
        rates = s["sentences_per_sec"]
        lines += ["", f"Seq2Seq student `{s['model']}`, greedy decoding of {s['pairs']} dev "
                      f"pairs at batch {s['batch_size']} (max {s['max_len']} tokens): "
                      f"{s['identical_outputs']} of {s['pairs']} outputs identical; "
                      f"{rates['JAX']:.1f} sentences/s in JAX (`jaxdistill evaluate`'s "
                      f"generator), {rates['ONNX Runtime fp32']:.1f} in ONNX Runtime fp32 "
                      f"({s['note']})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.deploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                   help="a classifier; the first is the teacher (100%%)")
    p.add_argument("--config", default="configs/task/teacher.yaml",
                   help="recipe giving task.* and seq_len")
    p.add_argument("--seq2seq", default="", help="a Seq2Seq student checkpoint")
    p.add_argument("--seq2seq-config", default="configs/task/cmlm_student.yaml")
    p.add_argument("--pairs", type=int, default=300, help="dev pairs decoded")
    p.add_argument("--passes", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/deploy", help="writes OUT.json, OUT.md")
    p.add_argument("--exports", default="runs/deploy_onnx",
                   help="where the ONNX files go (hundreds of MB: not beside the results)")
    args = p.parse_args(argv)
    models = [tuple(m.split("=", 1)) for m in args.model]
    if any(len(m) != 2 for m in models):
        p.error("--model takes NAME=PATH")
    out, exports = Path(args.out), Path(args.exports)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": f"{platform.machine()} with {__import__('os').cpu_count()} CPU cores",
              "date": time.strftime("%Y-%m-%d"),
              "classifiers": measure_classifiers(models, args.config, args.passes, exports)}
    if args.seq2seq:
        result["seq2seq"] = measure_seq2seq(args.seq2seq, args.seq2seq_config, args.passes,
                                            exports, args.pairs)
    command = "python -m benchmarks.deploy " + " ".join(
        f'--model "{m}"' for m in args.model) + (f" --seq2seq {args.seq2seq}"
                                                  if args.seq2seq else "")
    Path(f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
    Path(f"{out}.md").write_text(render(result, command))
    print(render(result, command))
    return 0


if __name__ == "__main__":
    sys.exit(main())
