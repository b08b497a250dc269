"""`jaxdistill pipeline FILE [stage.key=value ...]`: a method's whole recipe as one command.

A pipeline recipe names its stages, each an existing command with its recipe and keys, and how a
stage's output feeds the next by reference (`${general.run_dir}`, `${augment.out}`, `${root}`):

    root: runs/pipelines/tinybert          # each stage's output lives under it
    teacher: evaluate_teacher              # the evaluate stage whose metric is 100% (optional)
    stages:
      general:  {command: pretrain, config: configs/demo.yaml}
      teacher:  {command: finetune, config: configs/task/teacher.yaml}
      student:  {command: finetune, config: configs/task/kd.yaml,
                 set: {student.init: "${general.run_dir}", teacher.path: "${teacher.run_dir}/best"}}
      evaluate_student: {command: evaluate, model: "${student.run_dir}/best"}

Stages run in the order of the file, after the stages they reference. Each is a separate
`jaxdistill` process. A training stage's `run_dir` is ROOT/<stage> (an augment's `out`
ROOT/<stage>/<stage>.jsonl, an export's `out` ROOT/<stage>) unless `set` gives one. What ran is
recorded in ROOT/pipeline.json: a stage recorded with the same command and the same recipe (its
`config` file with its `base:` chain, as read) is complete and skipped; one that stopped resumes
(the commands resume exactly); one whose command or recipe changed, or that reads a stage that ran
again, starts over in a clean output. A failing stage stops the pipeline with
its exit code. At the end ROOT/results.md and results.json hold every evaluated model's metric,
its share of the teacher's, parameters, examples/s, and every stage's time.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from jaxdistill import config as config_lib
from jaxdistill.errors import UserError, closest

COMMANDS = ("pretrain", "finetune", "augment", "evaluate", "export", "prepare-data")
TRAINING = ("pretrain", "finetune")
STAGE_KEYS = {"command", "config", "set", "model", "checkpoint", "args"}
REFERENCE = re.compile(r"\$\{([\w-]+)(?:\.([\w-]+))?\}")
STATE_FILE = "pipeline.json"


class StageFailed(Exception):
    """A stage's command exited non-zero; the pipeline stops with its exit code."""

    def __init__(self, stage: str, code: int):
        super().__init__(f"pipeline: stage '{stage}' failed (exit {code}); fix it and run the "
                         f"same command again: finished stages are skipped.")
        self.code = code


# --------------------------------------------------------------------------------------------
# The recipe


def load(path: str | Path, overrides: Sequence[str] = ()) -> dict:
    """The pipeline recipe with its `stage.key=value` overrides, checked: {root, teacher,
    stages: {name: {command, config, set, model, checkpoint, args}}, order}."""
    data = config_lib.read_yaml(path)
    config_lib.check_keys(data, ["root", "teacher", "stages"], f"pipeline {path}")
    stages = data.get("stages")
    if not isinstance(stages, dict) or not stages:
        raise UserError(f"pipeline {path}: `stages` must map stage names to {{command, config, "
                        f"set, ...}}.")
    stages = {str(name): _stage(name, spec, path) for name, spec in stages.items()}
    root = str(data.get("root") or f"runs/pipelines/{Path(path).stem}")
    for item in overrides:
        keys, value = config_lib.parse_override(item)
        if keys == ["root"]:
            root = str(value)
            continue
        if keys[0] not in stages or len(keys) < 2:
            raise UserError(f"override '{item}': expected stage.key=value for a stage of "
                            f"{path} ({', '.join(stages)}){closest(keys[0], stages)}, or "
                            f"root=DIR.")
        stages[keys[0]]["set"][".".join(keys[1:])] = value
    teacher = data.get("teacher")
    if teacher is not None and (teacher not in stages
                                or stages[teacher]["command"] != "evaluate"):
        raise UserError(f"pipeline {path}: teacher: '{teacher}' must name an evaluate stage.")
    return {"root": root, "teacher": teacher, "stages": stages,
            "order": run_order(stages, path)}


def _stage(name: Any, spec: Any, path: str | Path) -> dict:
    where = f"pipeline {path}: stage '{name}'"
    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected a mapping with `command`.")
    config_lib.check_keys(spec, sorted(STAGE_KEYS), where)
    command = spec.get("command")
    if command not in COMMANDS:
        raise UserError(f"{where}: unknown command {command!r}.{closest(str(command), COMMANDS)}"
                        f" Commands: {', '.join(COMMANDS)}.")
    if command == "evaluate" and not spec.get("model"):
        raise UserError(f"{where}: an evaluate stage names its `model`.")
    if command == "export" and not spec.get("checkpoint"):
        raise UserError(f"{where}: an export stage names its `checkpoint`.")
    sets = spec.get("set") or {}
    if not isinstance(sets, dict):
        raise UserError(f"{where}: `set` maps keys to values (student.init: ...).")
    return {"command": command, "config": spec.get("config"), "set": dict(sets),
            "model": spec.get("model"), "checkpoint": spec.get("checkpoint"),
            "args": list(spec.get("args") or [])}


def references(stage: dict) -> set[str]:
    """The stages a stage reads (its `${stage.key}` references)."""
    text = json.dumps([stage["config"], stage["set"], stage["model"], stage["checkpoint"],
                       stage["args"]])
    return {m.group(1) for m in REFERENCE.finditer(text) if m.group(1) != "root"}


def run_order(stages: dict[str, dict], path: str | Path = "pipeline") -> list[str]:
    """The file's order, each stage after the stages it references; a reference to no stage or
    a cycle is an error naming it."""
    for name, stage in stages.items():
        unknown = references(stage) - set(stages)
        if unknown:
            ref = sorted(unknown)[0]
            raise UserError(f"pipeline {path}: stage '{name}' references '${{{ref}...}}', which "
                            f"is no stage{closest(ref, stages)}; stages: {', '.join(stages)}.")
    order, placing = [], []

    def place(name: str) -> None:
        if name in order:
            return
        if name in placing:
            cycle = placing[placing.index(name):] + [name]
            raise UserError(f"pipeline {path}: stages reference each other in a cycle: "
                            f"{' -> '.join(cycle)}.")
        placing.append(name)
        for ref in sorted(references(stages[name]), key=list(stages).index):
            place(ref)
        placing.pop()
        order.append(name)

    for name in stages:
        place(name)
    return order


# --------------------------------------------------------------------------------------------
# Commands


def outputs(name: str, stage: dict, root: Path) -> dict[str, str]:
    """What later stages may reference: run_dir (training), out (augment, export)."""
    command, sets = stage["command"], stage["set"]
    given = lambda key, default: str(resolve(sets.get(key, str(default)), {}, root))  # noqa
    if command in TRAINING:
        return {"run_dir": given("run_dir", root / name)}
    if command == "augment":
        return {"out": given("out", root / name / f"{name}.jsonl")}
    if command == "export":
        return {"out": given("out", root / name)}
    return {}


def resolve(value: Any, known: dict[str, dict[str, str]], root: Path) -> Any:
    def one(m: re.Match) -> str:
        stage, key = m.group(1), m.group(2)
        if stage == "root" and key is None:
            return str(root)
        if key not in known.get(stage, {}):
            raise UserError(f"pipeline: '${{{stage}.{key}}}': stage '{stage}' has no output "
                            f"'{key}'; it has {', '.join(known.get(stage, {})) or 'none'}.")
        return known[stage][key]

    if isinstance(value, list):
        return [resolve(v, known, root) for v in value]
    return REFERENCE.sub(one, value) if isinstance(value, str) else value


def argv(name: str, stage: dict, known: dict, root: Path) -> list[str]:
    """The stage's `jaxdistill` command line."""
    command = stage["command"]
    out = [command]
    if stage["config"]:
        out += ["--config", resolve(stage["config"], known, root)]
    if command == "evaluate":
        out += ["--model", resolve(stage["model"], known, root)]
    if command == "export":
        out += ["--checkpoint", resolve(stage["checkpoint"], known, root),
                "--out", known[name]["out"]]
    out += [resolve(a, known, root) for a in stage["args"]]
    sets = dict(stage["set"])
    if command in TRAINING:
        sets.setdefault("run_dir", known[name]["run_dir"])
    if command == "augment":
        sets.setdefault("out", known[name]["out"])
    if command != "export":
        out += [f"{k}={_text(resolve(v, known, root))}" for k, v in sets.items()]
    return out


def _text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict, bool)) or value is None \
        else str(value)


def run_stage(name: str, command: list[str]) -> dict:
    """Run one stage, its output shown as it comes; its last stdout line is its JSON summary."""
    proc = subprocess.Popen([sys.executable, "-m", "jaxdistill.cli", *command],
                            stdout=subprocess.PIPE, text=True, bufsize=1)
    last = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        last = line.strip() or last
    if proc.wait():
        raise StageFailed(name, proc.returncode)
    try:
        return json.loads(last)
    except json.JSONDecodeError:
        return {}


# --------------------------------------------------------------------------------------------
# The run


def run(recipe: dict, only: Sequence[str] = (), start: str | None = None) -> dict:
    """Run the stages (all, `only` these, or from `start` on); returns the results."""
    root = Path(recipe["root"])
    stages, order = recipe["stages"], recipe["order"]
    for name in [*only, *([start] if start else [])]:
        if name not in stages:
            raise UserError(f"pipeline: no stage '{name}'{closest(name, stages)}; stages: "
                            f"{', '.join(order)}.")
    chosen = (set(only) if only else set(order[order.index(start):]) if start else set(order))
    forced = set(only) | (chosen if start else set())
    state_file = root / STATE_FILE
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    known = {name: outputs(name, stages[name], root) for name in order}
    ran: set[str] = set()
    root.mkdir(parents=True, exist_ok=True)
    for name in order:
        if name not in chosen:
            continue
        command = argv(name, stages[name], known, root)
        recipe_now = recipe_of(stages[name], known, root)
        record = state.get(name)
        changed = recipe_changes(record, recipe_now) if record else []
        same = record is not None and record["command"] == command and not changed
        if changed:
            print(f"pipeline: stage '{name}': its recipe {stages[name]['config']} changed since "
                  f"it ran ({'; '.join(changed)}); starting over.", flush=True)
        stale = name in forced or bool(references(stages[name]) & ran)
        if same and "summary" in record and not stale:
            print(f"pipeline: stage '{name}' is complete ({root / STATE_FILE}); skipped.",
                  flush=True)
            continue
        if record and (not same or stale):
            _clear(name, known)
        print(f"pipeline: stage '{name}'{' (resuming)' if same and not stale else ''}: "
              f"jaxdistill {' '.join(command)}", flush=True)
        # Recorded when it starts: a rerun with another command or recipe starts over.
        state[name] = {"command": command, "recipe": recipe_now}
        state_file.write_text(json.dumps(state, indent=1))
        began = time.perf_counter()
        summary = run_stage(name, command)
        state[name] = {"command": command, "recipe": recipe_now, "summary": summary,
                       "seconds": time.perf_counter() - began}
        state_file.write_text(json.dumps(state, indent=1))
        ran.add(name)
    results = results_of(recipe, state)
    (root / "results.json").write_text(json.dumps(results, indent=1))
    (root / "results.md").write_text(markdown(results))
    print(markdown(results), flush=True)
    return results


def recipe_of(stage: dict, known: dict, root: Path) -> dict | None:
    """The stage's recipe as its command will read it (the `config` file, `base:` chain merged,
    as JSON values), or None: no `config`, or one that cannot be read (the stage's own command
    then fails with the reason)."""
    if not stage["config"]:
        return None
    try:
        data = config_lib.read_yaml(resolve(stage["config"], known, root))
    except UserError:
        return None
    return json.loads(json.dumps(data, default=str))


def recipe_changes(record: dict, now: dict | None, shown: int = 4) -> list[str]:
    """'key: old -> new' for each value of the stage's recipe that differs from the one its
    record ran with (the first `shown`, then a count). Values are compared, so a comment-only
    edit changes nothing; a record written before recipes were recorded counts as unchanged."""
    if "recipe" not in record or record["recipe"] == now:
        return []
    old, new = _flat(record["recipe"] or {}), _flat(now or {})
    missing = "(unset)"
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, missing) != new.get(k, missing))
    lines = [f"{k}: {json.dumps(old.get(k, missing))} -> {json.dumps(new.get(k, missing))}"
             for k in keys[:shown]]
    return lines + ([f"{len(keys) - shown} more"] if len(keys) > shown else [])


def _flat(data: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _clear(name: str, known: dict) -> None:
    """Remove what a stage wrote before, so that a changed command starts over."""
    for output in known[name].values():  # run_dir or out, and an unfinished writer's parts
        for path in (Path(output), Path(output + ".parts")):
            if path.exists():
                print(f"pipeline: stage '{name}' changed or reads a stage that ran again; "
                      f"removing {path}.", flush=True)
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def results_of(recipe: dict, state: dict) -> dict:
    """Each evaluated model's metric, share of the teacher's, size and speed; stage times."""
    evals = {name: state[name]["summary"] for name in recipe["order"]
             if recipe["stages"][name]["command"] == "evaluate" and name in state}
    teacher = evals.get(recipe["teacher"]) if recipe["teacher"] else None

    def metric(summary: dict) -> str | None:  # a seq2seq student's is BLEU
        split = summary.get("split", "dev")
        return summary.get("metric") or ("bleu" if f"{split}_bleu" in summary else None)

    def value(summary: dict) -> float | None:
        m = metric(summary)
        return summary.get(f"{summary.get('split', 'dev')}_{m}") if m else None

    rows = []
    for name, summary in evals.items():
        v, t = value(summary), value(teacher) if teacher else None
        rows.append({"stage": name, "model": summary.get("model"), "metric": metric(summary),
                     "value": v, "share_of_teacher": v / t if v is not None and t else None,
                     "parameters": summary.get("parameters"),
                     "examples_per_sec": summary.get("examples_per_sec")})
    times = {name: state[name]["seconds"] for name in recipe["order"] if name in state}
    return {"root": recipe["root"], "models": rows, "stage_seconds": times,
            "total_seconds": sum(times.values())}


def markdown(results: dict) -> str:
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731
    lines = [f"# Pipeline results ({results['root']})", "",
             "| model (stage) | metric | value | share of teacher | parameters | examples/s |",
             "|---|---|---|---|---|---|"]
    for r in results["models"]:
        params = "-" if r["parameters"] is None else f"{r['parameters'] / 1e6:.1f} M"
        lines.append(f"| {r['stage']} | {r['metric'] or '-'} | {fmt(r['value'], '.4f')} | "
                     f"{fmt(r['share_of_teacher'], '.1%')} | {params} | "
                     f"{fmt(r['examples_per_sec'], '.0f')} |")
    lines += ["", "| stage | wall time |", "|---|---|"]
    lines += [f"| {n} | {s / 60:.1f} min |" for n, s in results["stage_seconds"].items()]
    lines += ["", f"Total: {results['total_seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)
