"""MT-DNN: the multi-task loss, the task sampler, the BBC News task, ensemble soft targets, and one
short multi-task run with resume and per-task export."""
from __future__ import annotations

import json
import signal

import jax
import numpy as np
import pytest
import torch

from helpers import interrupt_at_first_checkpoint, loss_columns, read_metrics, run_cli, \
    write_tiny_teacher
from jaxdistill import config as config_lib
from jaxdistill.data import tasks
from jaxdistill.data.tasks.batches import TaskBatches
from jaxdistill.data.tasks.multitask import MultiTaskBatches, Span, task_arrays
from jaxdistill.errors import UserError
from jaxdistill.inference import onnx_export
from jaxdistill.methods.mtdnn import mtdnn_loss

# Three rows of one [3, 6] output layer: a 2-class task (classes 0-1, no teacher), a 3-class task
# (2-4, with soft targets) and a regression task (5, with the ensemble's mean prediction).
LOGITS = np.array([[0.3, -1.2, 9.0, 9.0, 9.0, 9.0],
                   [5.0, 5.0, 0.5, 1.5, -0.7, 5.0],
                   [7.0, 7.0, 7.0, 7.0, 7.0, 0.8]], np.float32)
BATCH = {"label_start": np.array([0, 2, 5]), "label_stop": np.array([2, 5, 6]),
         "labels": np.array([1.0, 2.0, 0.25], np.float32),
         "regression": np.array([0.0, 0.0, 1.0], np.float32),
         "soft_targets": np.array([[0, 0, 0, 0, 0, 0], [0, 0, 0.2, 0.5, 0.3, 0],
                                   [0, 0, 0, 0, 0, 0.6]], np.float32),
         "has_soft_targets": np.array([0.0, 1.0, 1.0], np.float32)}


def test_loss_matches_hand_computed_values():
    ce = lambda z, y: float(torch.nn.functional.cross_entropy(  # noqa: E731
        torch.tensor(z)[None], torch.tensor([y])))
    logp = torch.log_softmax(torch.tensor(LOGITS[1, 2:5]), -1).numpy()
    row0 = ce(LOGITS[0, 0:2], 1)  # no teacher: the label alone
    hard1, soft1 = ce(LOGITS[1, 2:5], 2), -float(np.dot([0.2, 0.5, 0.3], logp))
    hard2, soft2 = (0.8 - 0.25) ** 2, (0.8 - 0.6) ** 2
    want = (row0 + 0.5 * (hard1 + soft1) + 0.5 * (hard2 + soft2)) / 3
    loss, terms = mtdnn_loss(LOGITS, BATCH, 0.5)
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(terms["loss/hard"]) == pytest.approx((row0 + hard1 + hard2) / 3, rel=1e-6)
    assert float(terms["loss/soft"]) == pytest.approx((soft1 + soft2) / 2, rel=1e-6)
    plain, _ = mtdnn_loss(LOGITS, BATCH, 0.0)  # soft_weight 0: plain multi-task training
    assert float(plain) == pytest.approx((row0 + hard1 + hard2) / 3, rel=1e-6)


def test_each_row_trains_only_its_own_task_head():
    grad = np.asarray(jax.grad(lambda z: mtdnn_loss(z, BATCH, 0.5)[0])(LOGITS))
    assert np.all(grad[0, 2:] == 0) and np.all(grad[1, [0, 1, 5]] == 0) and np.all(grad[2, :5] == 0)
    assert np.all(grad[0, :2] != 0) and np.all(grad[1, 2:5] != 0) and grad[2, 5] != 0


def _tasks(*rows: int, batch: int = 4) -> MultiTaskBatches:
    return MultiTaskBatches([TaskBatches({"x": np.arange(n) + 1000 * k}, batch, seed=k)
                             for k, n in enumerate(rows)], seed=3)


def test_sampler_draws_tasks_by_their_number_of_batches_deterministically():
    batches = _tasks(40, 20, 8)  # 10, 5 and 2 batches per epoch
    assert batches.steps_per_epoch == 17
    for epoch in range(3):
        drawn = [batches.task_of(s) for s in range(17 * epoch, 17 * (epoch + 1))]
        for k, count in enumerate((10, 5, 2)):
            # MT-DNN's pooled shuffle: each of the task's batches of this epoch exactly once.
            assert sorted(n for t, n in drawn if t == k) == list(range(count * epoch,
                                                                         count * (epoch + 1)))
    first, second = ([batches.task_of(s)[0] for s in range(17 * e, 17 * (e + 1))] for e in (0, 1))
    assert first != second and first != sorted(first)  # shuffled, and anew every epoch
    # A pure function of the step: a fresh sampler asked in another order (a resume) agrees.
    steps = np.random.default_rng(0).permutation(60)
    fresh = _tasks(40, 20, 8)
    for s in steps:
        assert np.array_equal(fresh.batch(int(s))["x"], batches.batch(int(s))["x"])
        assert fresh.batch(int(s))["x"][0] // 1000 == batches.task_of(int(s))[0]


def test_task_arrays_place_soft_targets_in_the_task_span():
    arrays = {"input_ids": np.ones((2, 4), np.int32), "labels": np.array([0, 2], np.int32),
              "soft_targets": np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)}
    span = Span("b", "bbc_news", 2, 3, None, ("accuracy",), "accuracy")
    out = task_arrays(arrays, span, width=6)
    assert out["soft_targets"][:, 2:5].tolist() == arrays["soft_targets"].tolist()
    assert out["soft_targets"][:, [0, 1, 5]].sum() == 0
    assert out["label_start"].tolist() == [2, 2] and out["label_stop"].tolist() == [5, 5]
    assert out["labels"].dtype == np.float32 and out["has_soft_targets"].tolist() == [1, 1]
    with pytest.raises(UserError, match="2 entries per row, the task 3 labels"):
        task_arrays({**arrays, "soft_targets": arrays["soft_targets"][:, :2]}, span, 6)


def test_bbc_news_task_from_the_package():
    task = tasks.load_task(config_lib.TaskConfig(name="bbc_news"))
    assert len(task.train) + len(task.dev) == 2225 and task.num_labels == 5
    assert task.label_names == ("business", "entertainment", "politics", "sports", "tech")
    assert sorted({ex.label for ex in task.dev}) == [0, 1, 2, 3, 4]  # stratified hold-out
    assert all(ex.text_a and ex.text_b is None for ex in task.train)


def test_tasks_keys_name_their_task_and_bad_ones_are_named():
    from jaxdistill.train import kinds
    from jaxdistill.train.kinds import multitask

    kind, cfg = kinds.load("finetune", "configs/task/mtdnn/kd.yaml",
                           ["tasks.imdb.max_dev_examples=5"])
    assert kind.name == "tasks" and list(cfg.tasks) == ["rotten_tomatoes", "imdb", "bbc_news"]
    assert cfg.tasks["imdb"].name == "imdb" and cfg.tasks["imdb"].max_dev_examples == 5
    assert cfg.tasks["imdb"].augmented.endswith("imdb.jsonl")
    with pytest.raises(UserError, match="max_train_examples"):
        config_lib.apply_overrides({}, ["tasks.imdb.max_train=3"], multitask.MultiTaskConfig)
    # A one-task method has no `tasks`, a multi-task one no `task`: each names the other kind.
    with pytest.raises(UserError, match="unknown key 'tasks'.*'tasks' is a key of tasks runs"):
        kinds.load("finetune", None, ["method.name=kd", "tasks.imdb.max_train_examples=3"])
    with pytest.raises(UserError, match="unknown key 'task'.*kind 'tasks'"):
        kinds.load("finetune", "configs/task/mtdnn/kd.yaml", ["task.max_train_examples=9"])
    with pytest.raises(UserError, match="under `tasks`"):
        multitask.load_tasks(config_lib.from_dict(multitask.MultiTaskConfig, {"method": "mtdnn"}))


TINY_MT = ["seq_len=32", "batch_size=8", "tensorboard=false", "learning_rate=1e-3",
           "log_every=1", "eval_batch_size=32"]


def test_ensemble_targets_then_multitask_run_with_resume_and_export(tmp_path, tiny,
                                                                    tiny_classifier):
    # Soft targets of a two-member ensemble (a fine-tuned tiny classifier and a random one).
    other = write_tiny_teacher(tmp_path / "member", arch="BertForSequenceClassification",
                               layers=2, seed=5)
    members = [f"{tiny_classifier}/best", str(other)]
    targets = tmp_path / "rt.jsonl"
    task_keys = {"max_train_examples": 48, "max_dev_examples": 40}
    from jaxdistill.teacher_data import ensemble
    from jaxdistill.train.kinds import multitask

    summary = ensemble.run(config_lib.from_dict(ensemble.EnsembleTargetsConfig, {
        "out": str(targets), "teachers": members, "seq_len": 32, "batch_size": 16,
        "task": {"name": "rotten_tomatoes", **task_keys}}))
    assert summary["rows"] == 48 and len(summary["dev"]["members"]) == 2
    assert 0 <= summary["dev"]["ensemble"]["accuracy"] <= 1
    rows = [json.loads(line) for line in targets.read_text().splitlines()]
    task = tasks.load_task(config_lib.TaskConfig(**task_keys))
    assert [r["text_a"] for r in rows] == [ex.text_a for ex in task.train]
    assert [r["label"] for r in rows] == [ex.label for ex in task.train]
    # Oracle: each member's probabilities on the whole set in one unsorted batch, averaged.
    from jaxdistill.loading import load_pretrained

    probs = []
    for ref in members:
        model, params, tok = load_pretrained(ref)
        arrays = tasks.encode(task.train, tok, 32, False)
        logits = model.apply(params, {k: arrays[k] for k in model.input_spec()}).logits
        probs.append(np.asarray(jax.nn.softmax(logits, -1)))
    np.testing.assert_allclose([r["soft_targets"] for r in rows], np.mean(probs, 0), atol=1e-5)

    # Multi-task student: Rotten Tomatoes taught by the ensemble, BBC News by its labels alone.
    def args(run_dir):
        return ["finetune", "--config", "configs/task/mtdnn/student.yaml", f"run_dir={run_dir}",
                f"student.init={tiny}", "steps=16", "save_every=4", "eval_every=8", *TINY_MT,
                "tasks={rotten_tomatoes: {}, bbc_news: {}}",  # of the recipe's three
                f"tasks.rotten_tomatoes.augmented={targets}",
                *(f"tasks.{t}.{k}={v}" for t in ("rotten_tomatoes", "bbc_news")
                  for k, v in task_keys.items())]

    straight = tmp_path / "straight"
    proc = run_cli(*args(straight))
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tasks"] == ["rotten_tomatoes", "bbc_news"]
    assert {"rotten_tomatoes_accuracy", "bbc_news_accuracy", "average"} <= set(out["best_dev"])
    first = read_metrics(straight)[0]
    assert {"loss/hard", "loss/soft"} <= set(first)
    run_dir = tmp_path / "resumed"
    stopped = interrupt_at_first_checkpoint(["-m", "jaxdistill.cli", *args(run_dir)], run_dir,
                                            signal.SIGTERM)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert json.loads(stopped.stdout.strip().splitlines()[-1])["preempted"] is True
    run_cli(*args(run_dir))
    dev = lambda rows: {r["step"]: r.get("dev_average") for r in rows}  # noqa: E731
    assert loss_columns(read_metrics(run_dir)) == loss_columns(read_metrics(straight))
    assert dev(read_metrics(run_dir)) == dev(read_metrics(straight))

    # Export: one Hugging Face classifier per task whose logits are that task's span.
    import transformers

    listing = json.loads((straight / "hf" / "tasks.json").read_text())
    assert [(t["task_id"], t["label_start"], t["num_labels"]) for t in listing] == [
        ("rotten_tomatoes", 0, 2), ("bbc_news", 2, 5)]
    model, params, tok = load_pretrained(str(straight / "best"))
    bbc = tasks.encode(tasks.load_task(config_lib.TaskConfig(name="bbc_news", **task_keys)).dev[:6],
                       tok, 32, False)
    full = np.asarray(model.apply(params, {k: bbc[k] for k in model.input_spec()}).logits)
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(straight / "hf" / "bbc_news")).eval()
    assert hf.config.id2label[3] == "sports"
    with torch.no_grad():
        ours = hf(**{k: torch.tensor(bbc[k], dtype=torch.long) for k in
                     ("input_ids", "attention_mask", "token_type_ids")}).logits.numpy()
    np.testing.assert_allclose(ours, full[:, 2:7], atol=1e-4)
    # ONNX: one model.onnx per task head, each checked against its span of the JAX logits.
    onnx = json.loads(run_cli("export", "--checkpoint", str(straight / "best"), "--out",
                              str(tmp_path / "onnx"), "--format", "onnx").stdout.strip()
                      .splitlines()[-1])
    assert sorted(onnx["tasks"]) == ["bbc_news", "rotten_tomatoes"]
    assert all(r["max_abs_logit_diff"] <= 1e-4 for r in onnx["tasks"].values())
    session = onnx_export.session(tmp_path / "onnx" / "bbc_news" / "model.onnx")
    got = session.run(["logits"], {k: bbc[k].astype(np.int64) for k in
                                   ("input_ids", "attention_mask", "token_type_ids")})[0]
    np.testing.assert_allclose(got, full[:, 2:7], atol=1e-4)
    assert (tmp_path / "onnx" / "tasks.json").is_file()
    # `jaxdistill evaluate` of the checkpoint reads its tasks from the metadata.
    ev = multitask.evaluate_model(str(straight / "best"), config_lib.from_dict(
        multitask.MultiTaskConfig, {"seq_len": 32, "eval_batch_size": 32}),
        predictions=str(tmp_path / "predictions.jsonl"))
    assert ev["dev_average"] == pytest.approx(out["best_dev_average"], abs=1e-9)
    assert ev["dev_bbc_news_accuracy"] == out["best_dev"]["bbc_news_accuracy"]
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    bbc_rows = [r for r in rows if r["task"] == "bbc_news"]
    assert np.mean([r["label"] == r["prediction"] for r in bbc_rows]) == pytest.approx(
        ev["dev_bbc_news_accuracy"])
