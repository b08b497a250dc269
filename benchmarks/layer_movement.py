"""How far each encoder layer of a MobileBERT run moved in each phase: ||W_end - W_start|| /
||W_start|| over all of a layer's tensors, from the checkpoints at the phase boundaries.

  python -m benchmarks.layer_movement runs/mobilebert_demo [--json OUT]

The run must keep a checkpoint at every boundary (`save_every` and `keep_every` equal to
`steps_per_layer`, as configs/mobilebert_demo.yaml sets them); step 0 is the initialisation,
rebuilt from the run's config and seed. A small movement in a layer's own phase means that
transfer had no room to work (LAMB moves a tensor by at most lr x ||W|| a step).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np
from flax.traverse_util import flatten_dict

from jaxdistill import checkpoint, loading
from jaxdistill.train import kinds
from jaxdistill.methods import method_class, parse_options
from jaxdistill.methods.mobilebert import _OPEN_END, segments


def _layer_vectors(model, params: dict) -> dict[int, np.ndarray]:
    """Every encoder layer's tensors, flattened into one vector per layer."""
    canonical = flatten_dict(model.canonical(params))
    ids = flatten_dict(_canonical_ids(model))
    out: dict[int, list] = {}
    for path, value in canonical.items():
        layer = ids[path]
        if layer >= 0:
            out.setdefault(layer, []).append(np.asarray(value, np.float64).ravel())
    return {k: np.concatenate(v) for k, v in sorted(out.items())}


def _canonical_ids(model) -> dict:
    """Model.layer_ids in the canonical (unscanned) layout."""
    unscanned = model.replace(scan_layers=False) if getattr(model.config, "scan_layers", False) \
        else model
    return unscanned.layer_ids()


def movement(run_dir: Path) -> dict:
    cfg = kinds.load("pretrain", str(run_dir / "config.yaml"))[1]
    step_dirs = {int(p.name): p for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()}
    model, _, _ = loading.load_pretrained(str(step_dirs[max(step_dirs)]))
    options = parse_options(method_class(cfg.method.name), cfg.method.options)
    segs = segments(options.phases, model.config.num_layers)
    # The loop's own draw of a fresh student (train/loop.py init_state); a started student
    # (teacher_embeddings) replaces only its word table, which no layer holds.
    init = jax.device_get(jax.jit(model.init)(jax.random.split(jax.random.key(cfg.seed))[0]))
    states = {0: _layer_vectors(model, init)}
    rows = []
    for seg in segs:
        stop = min(seg.stop, max(step_dirs)) if seg.stop != _OPEN_END else max(step_dirs)
        if seg.start not in states and seg.start in step_dirs:
            states[seg.start] = _layer_vectors(model, checkpoint.read_student_params(
                step_dirs[seg.start]))
        if stop not in step_dirs or seg.start not in states:
            raise SystemExit(f"{run_dir}: no checkpoint at step {seg.start} or {stop}; rerun "
                             f"with save_every and keep_every at the phase length.")
        states[stop] = _layer_vectors(model, checkpoint.read_student_params(step_dirs[stop]))
        before, after = states[seg.start], states[stop]
        rows.append({"phase": seg.kind if seg.layer is None else f"{seg.kind} L{seg.layer}",
                     "steps": f"{seg.start}-{stop}",
                     "moved": [float(np.linalg.norm(after[l] - before[l])
                                     / max(np.linalg.norm(before[l]), 1e-12)) for l in before]})
    return {"run_dir": str(run_dir), "rows": rows}


def markdown(report: dict) -> str:
    n = len(report["rows"][0]["moved"])
    lines = ["| phase | steps | " + " | ".join(f"L{i}" for i in range(n)) + " |",
             "|---|---|" + "---|" * n]
    for r in report["rows"]:
        lines.append(f"| {r['phase']} | {r['steps']} | "
                     + " | ".join(f"{m:.2f}" for m in r["moved"]) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args()
    report = movement(Path(args.run_dir))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print(markdown(report))


if __name__ == "__main__":
    main()
