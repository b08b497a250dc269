"""A benchmark's chain of `jaxdistill` commands, run by the pipeline runner (jaxdistill/pipeline.py).

A benchmark states its stages as command lines (`{stage: ["finetune", "--config", R, "k=v",
...]}`), which reads like the shell commands docs/results.md prints; `recipe` turns them into a
pipeline recipe, written beside its runs as `pipeline.yaml` so that `jaxdistill pipeline` reruns
it by hand, and `run` hands it to the runner: stage order, skipping what finished, resuming what
stopped, starting over what changed (and what reads it), stopping at a failure. A path that one
stage writes (a training stage's `run_dir`, an augmentation's `out`) becomes a `${stage.key}`
reference wherever a later stage reads it, so the runner knows what depends on what.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from jaxdistill import pipeline

STAGE_NAME = re.compile(r"^[\w-]+$")
OUTPUT_KEY = {"pretrain": "run_dir", "finetune": "run_dir", "augment": "out"}
OPTION_KEYS = {"--config": "config", "--model": "model"}


def recipe(plan: dict[str, list[str]], root: Path, teacher: str | None = None) -> dict:
    """The pipeline recipe (as `jaxdistill pipeline` reads it) of `plan`, stage name -> argv."""
    stages: dict[str, dict] = {}
    for name, argv in plan.items():
        if not STAGE_NAME.match(name):
            raise ValueError(f"stage name {name!r}: letters, digits, '_' and '-' only")
        command, rest = argv[0], list(argv[1:])
        if command not in OUTPUT_KEY and command != "evaluate":
            raise ValueError(f"stage {name}: {command} is not a command a benchmark chains")
        spec: dict = {"command": command, "set": {}, "args": []}
        while rest:
            token = rest.pop(0)
            if token in OPTION_KEYS:
                spec[OPTION_KEYS[token]] = rest.pop(0)
            elif token.startswith("--"):  # an option with its value: --predictions FILE
                spec["args"] += [token, rest.pop(0)]
            elif "=" in token:
                key, value = token.split("=", 1)
                spec["set"][key] = value
            else:
                raise ValueError(f"stage {name}: {token!r} is neither an option nor key=value")
        stages[name] = spec
    # What each stage writes -> a reference to it; longest paths first, so that runs/demo_2layers
    # is never read as runs/demo followed by text.
    written = sorted(((stages[n]["set"][OUTPUT_KEY[s["command"]]], n, OUTPUT_KEY[s["command"]])
                      for n, s in stages.items() if OUTPUT_KEY.get(s["command"]) in s["set"]),
                     key=lambda x: -len(x[0]))

    def refer(value: str, reader: str) -> str:
        for path, writer, key in written:
            if writer != reader:
                value = re.sub(re.escape(path) + r"(?=$|[/,\]\s])",
                               lambda m: f"${{{writer}.{key}}}", value)
        return value

    for name, spec in stages.items():
        own = OUTPUT_KEY.get(spec["command"])
        spec["set"] = {k: v if k == own else refer(v, name) for k, v in spec["set"].items()}
        spec["args"] = [refer(a, name) for a in spec["args"]]
        if "model" in spec:
            spec["model"] = refer(spec["model"], name)
        if not spec["set"]:
            del spec["set"]
        if not spec["args"]:
            del spec["args"]
    out = {"root": str(root), "stages": stages}
    if teacher:
        out["teacher"] = teacher
    return out


def run(plan: dict[str, list[str]], root: Path, teacher: str | None = None,
        upto: str | None = None) -> dict:
    """Write ROOT/pipeline.yaml from `plan` and run it (through stage `upto` only, when given);
    returns {stage: {summary, minutes, command}} of every stage that finished, from
    ROOT/pipeline.json."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "pipeline.yaml"
    path.write_text("# Written by a benchmark (benchmarks/stages.py); `jaxdistill pipeline` "
                    "reruns it.\n" + yaml.safe_dump(recipe(plan, root, teacher), sort_keys=False,
                                                   width=100))
    loaded = pipeline.load(path)
    if upto is not None:
        loaded = {**loaded, "order": loaded["order"][:loaded["order"].index(upto) + 1]}
    try:
        pipeline.run(loaded)
    except pipeline.StageFailed as e:
        raise SystemExit(str(e)) from None
    return finished(root)


def finished(root: Path) -> dict:
    """{stage: {summary, minutes, command}} of the stages ROOT/pipeline.json records as done."""
    state = json.loads((Path(root) / pipeline.STATE_FILE).read_text())
    return {name: {"summary": rec["summary"], "minutes": rec["seconds"] / 60,
                   "command": "jaxdistill " + " ".join(rec["command"])}
            for name, rec in state.items() if "summary" in rec}


def command(argv: list[str]) -> dict:
    """One `jaxdistill` command on its own, not part of a chain: its JSON summary (the last
    stdout line); a failure stops the benchmark, naming the command."""
    proc = subprocess.run([sys.executable, "-m", "jaxdistill.cli", *argv], capture_output=True,
                          text=True, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode:
        raise SystemExit(f"jaxdistill {' '.join(argv)} failed ({proc.returncode}):\n"
                         f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
