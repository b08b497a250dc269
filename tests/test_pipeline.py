"""`jaxdistill pipeline`: stage order and references, bad recipes (exit 2 naming the problem), and
a real pipeline of tiny runs: outputs feed the next stage, complete stages are skipped, a
pipeline killed inside a stage resumes it and ends as an uninterrupted one, a failing stage
stops it with its exit code, a stage whose recipe changed starts over."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, TINY_TASK, cli_env, read_metrics, run_cli
from jaxdistill import pipeline
from jaxdistill.errors import UserError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_order_follows_references_and_overrides_reach_stages(tmp_path):
    recipe = pipeline.load(_write(tmp_path / "p.yaml", """
stages:
  student: {command: finetune, set: {student.init: "${general.run_dir}"}}
  general: {command: pretrain}
  evaluate: {command: evaluate, model: "${student.run_dir}/best"}
"""), ["general.steps=7", "root=/tmp/somewhere"])
    assert recipe["order"] == ["general", "student", "evaluate"]
    assert recipe["stages"]["general"]["set"] == {"steps": 7}
    root = Path(recipe["root"])
    known = {n: pipeline.outputs(n, s, root) for n, s in recipe["stages"].items()}
    assert pipeline.argv("student", recipe["stages"]["student"], known, root) == [
        "finetune", "student.init=/tmp/somewhere/general", "run_dir=/tmp/somewhere/student"]
    assert pipeline.argv("evaluate", recipe["stages"]["evaluate"], known, root) == [
        "evaluate", "--model", "/tmp/somewhere/student/best"]


@pytest.mark.parametrize("text, needle", [
    ("stages:\n  a: {command: pretrian}\n", "unknown command 'pretrian'. Did you mean 'pretrain'"),
    ("stages:\n  a: {command: finetune, set: {student.init: '${genral.run_dir}'}}\n"
     "  general: {command: pretrain}\n", "references '${genral...}', which is no stage"),
    ("stages:\n  a: {command: finetune, set: {x: '${b.run_dir}'}}\n"
     "  b: {command: finetune, set: {x: '${a.run_dir}'}}\n", "cycle: a -> b -> a"),
    ("stages:\n  a: {command: evaluate}\n", "names its `model`"),
    ("stages:\n  a: {command: finetune, confg: x.yaml}\n", "unknown key 'confg'"),
    ("stage:\n  a: {command: finetune}\n", "unknown key 'stage'"),
])
def test_bad_recipes_name_the_problem(tmp_path, text, needle):
    with pytest.raises(UserError) as err:
        pipeline.load(_write(tmp_path / "p.yaml", text))
    assert needle in str(err.value), str(err.value)


def test_a_bad_recipe_exits_2_without_a_traceback(tmp_path):
    recipe = _write(tmp_path / "p.yaml", "stages:\n  a: {command: finetune, set: {x: '${b.out}'}}\n"
                                         "  b: {command: augment, set: {y: '${a.run_dir}'}}\n")
    proc = subprocess.run([sys.executable, "-m", "jaxdistill.cli", "pipeline", str(recipe)],
                          cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "cycle" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (REPO / "runs" / "pipelines" / "p" / "a").exists()  # nothing ran


# --- a real pipeline of tiny runs ------------------------------------------------------------


def _recipe(tmp_path: Path, tiny: Path, teacher: Path) -> Path:
    task = ", ".join(f'"{a}"' for a in TINY_TASK)
    return _write(tmp_path / "kd.yaml", f"""
teacher: evaluate_teacher
stages:
  student:
    command: finetune
    config: configs/task/kd.yaml
    args: [{task}]
    set: {{student.init: "{tiny}", teacher.path: "{teacher}/best", steps: 8, save_every: 2,
          eval_every: 4}}
  evaluate_teacher: {{command: evaluate, model: "{teacher}/best", args: [{task}]}}
  evaluate_student:
    command: evaluate
    model: "${{student.run_dir}}/best"
    args: [{task}]
  export: {{command: export, checkpoint: "${{student.run_dir}}/best"}}
""")


def _pipeline(recipe: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`jaxdistill pipeline RECIPE ARGS` (each stage in a `jaxdistill` process of its own)."""
    return run_cli("pipeline", str(recipe), *args, check=check)


def test_pipeline_runs_skips_resumes_and_stops_on_a_failure(tmp_path, tiny, tiny_classifier):
    recipe = _recipe(tmp_path, tiny, tiny_classifier)
    straight = tmp_path / "straight"
    _pipeline(recipe, f"root={straight}")
    results = json.loads((straight / "results.json").read_text())
    rows = {r["stage"]: r for r in results["models"]}
    assert rows["evaluate_teacher"]["share_of_teacher"] == pytest.approx(1.0)
    assert rows["evaluate_student"]["model"] == str(straight / "student" / "best")
    assert 0 < rows["evaluate_student"]["value"] <= 1 and rows["evaluate_student"]["parameters"]
    assert (straight / "export" / "config.json").is_file()  # the export read the student
    assert "| evaluate_student | accuracy |" in (straight / "results.md").read_text()

    again = _pipeline(recipe, f"root={straight}")  # everything complete: nothing runs
    assert again.stdout.count("is complete") == 4 and "jaxdistill finetune" not in again.stdout

    # Killed inside the student stage (the runner and its stage), then the same command.
    root = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "jaxdistill.cli", "pipeline", str(recipe),
                             f"root={root}"], cwd=REPO, env=cli_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts, deadline = root / "student" / "checkpoints", time.time() + 600
    while not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    stopped = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert stopped < 8, "the stage finished before it was killed; the test proves nothing"
    resumed = _pipeline(recipe, f"root={root}")
    assert "stage 'student' (resuming)" in resumed.stdout

    def losses(run_dir):
        return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}

    assert losses(root / "student") == losses(straight / "student")
    after = json.loads((root / "results.json").read_text())
    assert [r["value"] for r in after["models"]] == [r["value"] for r in results["models"]]

    # A failing stage stops the pipeline with its exit code, naming it; later stages do not run.
    failed = _pipeline(recipe, f"root={tmp_path / 'failed'}", "student.learning_rate=-1",
                       check=False)
    assert failed.returncode == 2, failed.stderr[-2000:]
    assert "stage 'student' failed (exit 2)" in failed.stderr
    assert not (tmp_path / "failed" / "export").exists()


def test_a_changed_recipe_starts_its_stage_over_and_a_comment_does_not(tmp_path,
                                                                         tiny_classifier):
    """The record holds the recipe's values as read (`base:` chain merged): a value changed in
    the base reruns the stage, naming the key; a comment-only edit leaves it complete."""
    base = _write(tmp_path / "base.yaml", f"base: {REPO}/configs/task/teacher.yaml\n"
                  "tensorboard: false\nseq_len: 32\neval_batch_size: 32\n"
                  "task: {max_dev_examples: 64}\n")
    recipe_file = _write(tmp_path / "eval.yaml", "base: base.yaml\n")
    recipe = _write(tmp_path / "p.yaml", f"stages:\n  evaluate_teacher: {{command: evaluate, "
                    f"model: '{tiny_classifier}/best', config: '{recipe_file}'}}\n")
    root = f"root={tmp_path / 'runs'}"
    first = _pipeline(recipe, root)
    assert "jaxdistill evaluate" in first.stdout
    recipe_file.write_text("# the same values, another comment\nbase: base.yaml\n")
    assert "is complete" in _pipeline(recipe, root).stdout
    base.write_text(base.read_text().replace("eval_batch_size: 32", "eval_batch_size: 16"))
    again = _pipeline(recipe, root).stdout
    assert ("changed since it ran (eval_batch_size: 32 -> 16); starting over" in again
            and "jaxdistill evaluate" in again), again[-2000:]
    state = json.loads((tmp_path / "runs" / "pipeline.json").read_text())
    assert state["evaluate_teacher"]["recipe"]["eval_batch_size"] == 16
    # A record from before recipes were recorded counts as unchanged; a key gone is named.
    assert pipeline.recipe_changes({"command": []}, {"a": 1}) == []
    assert pipeline.recipe_changes({"recipe": {"a": {"b": 1}, "c": 2}}, {"a": {"b": 1}}) == \
        ['c: 2 -> "(unset)"']


def test_every_shipped_pipeline_resolves_to_valid_stage_recipes():
    """Each stage of configs/pipelines/*.yaml, references resolved, is a recipe its command
    accepts (keys, ranges, kinds of data), without running anything."""
    from jaxdistill import config

    paths = sorted((config.CONFIG_DIR / "pipelines").glob("*.yaml"))
    assert {p.stem for p in paths} >= {"tinybert", "kd", "fastbert", "bilstm", "distilbert",
                                        "mobilebert", "mtdnn", "cmlm", "minilm"}
    for path in paths:
        check_stage_recipes(pipeline.load(path), path)


def check_stage_recipes(recipe: dict, path) -> None:
    """Each stage of a loaded pipeline, references resolved, is a recipe its command accepts."""
    from jaxdistill import teacher_data
    from jaxdistill.train import kinds

    root = Path(recipe["root"])
    known = {n: pipeline.outputs(n, s, root) for n, s in recipe["stages"].items()}
    for name in recipe["order"]:
        command = pipeline.argv(name, recipe["stages"][name], known, root)
        flags = dict(zip(command[1::2], command[2::2]))
        keys = [a for a in command[1:] if "=" in a and not a.startswith("-")]
        if command[0] in ("pretrain", "finetune"):
            kind, cfg = kinds.load(command[0], flags.get("--config"), keys)
            assert cfg.run_dir == known[name]["run_dir"], (path, name)
        elif command[0] == "augment":
            spec, cfg = teacher_data.load(flags.get("--config"), keys)
            assert cfg.out == known[name]["out"], (path, name)
        elif command[0] == "evaluate":
            kinds.base.load_for_evaluate(flags["--model"], flags.get("--config"), keys)
        assert "${" not in " ".join(command), (path, name, command)


def test_benchmark_chains_run_as_pipelines(tmp_path):
    """benchmarks/task_pipeline.py, mobilebert.py and cmlm.py hand their command chains to the
    runner (benchmarks/stages.py): the written recipe loads, a path one stage writes is a
    reference where another reads it (so the runner orders and reruns by it), and every stage
    is a valid recipe."""
    import yaml

    from benchmarks import cmlm, mobilebert, stages, task_pipeline

    root = tmp_path / "bench"
    plan = {task_pipeline._flat(run): cmd for _, run, cmd in
            task_pipeline.stages(root, 1.0, 20, 2000)}
    plan.update(task_pipeline.evaluation_stages(root, set()))
    path = tmp_path / "task_pipeline.yaml"
    path.write_text(yaml.safe_dump(stages.recipe(plan, root)))
    recipe = pipeline.load(path)
    kd = recipe["stages"]["task_kd"]["set"]
    assert kd["student.init"] == "${demo.run_dir}"  # not confused with demo_2layers
    assert kd["teacher.path"] == "${task_teacher.run_dir}/best"
    assert recipe["stages"]["task_kd_2layers"]["set"]["student.init"] == "${demo_2layers.run_dir}"
    assert recipe["stages"]["evaluate_task_kd"]["model"] == "${task_kd.run_dir}/best"
    assert pipeline.references(recipe["stages"]["mtdnn_kd"]) == {
        "mtdnn_targets_rotten_tomatoes", "mtdnn_targets_imdb", "mtdnn_targets_bbc_news"}
    assert recipe["order"].index("task_teacher") < recipe["order"].index("task_kd")
    check_stage_recipes(recipe, path)
    mb = tmp_path / "mobilebert.yaml"
    mb.write_text(yaml.safe_dump(stages.recipe(mobilebert.plan(tmp_path / "runs"), root)))
    check_stage_recipes(pipeline.load(mb), mb)
    training, evaluations, _ = cmlm.chain(tmp_path / "runs")
    path = tmp_path / "cmlm.yaml"
    path.write_text(yaml.safe_dump(stages.recipe({**training, **evaluations}, root)))
    recipe = pipeline.load(path)
    assert recipe["stages"]["student_kd"]["set"]["task.augmented"] == "${topk.out}"
    check_stage_recipes(recipe, path)
    with pytest.raises(ValueError, match="neither an option nor key=value"):
        stages.recipe({"a": ["finetune", "stray"]}, root)
