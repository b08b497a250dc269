"""Hugging Face `datasets` as the pretraining corpus and as task data: a `save_to_disk`
directory, Parquet shards and the Hub's file layout, built here with `datasets` from the packaged
real text; exact resume after SIGKILL; clear errors."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from helpers import (REPO, TINY, TINY_TASK, cli_env, final_params, loss_columns,
                     read_metrics, run_cli)
from jaxdistill.config import TaskConfig
from jaxdistill.data import tasks
from jaxdistill.data.corpus import iter_documents

datasets = pytest.importorskip("datasets")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """200 IMDB reviews as one Dataset: saved with save_to_disk, and as two Parquet shards."""
    root = tmp_path_factory.mktemp("hf_corpus")
    docs = [" ".join(d) for d in iter_documents("package:imdb", max_documents=200)]
    ds = datasets.Dataset.from_dict({"review": docs, "id": list(range(len(docs)))})
    ds.save_to_disk(str(root / "saved"))
    (root / "parquet").mkdir()
    for i, shard in enumerate((ds.select(range(120)), ds.select(range(120, 200)))):
        shard.to_parquet(str(root / "parquet" / f"part-{i}.parquet"))
    return root


def _pretrain(run_dir, teacher, corpus_ref, *extra):
    # TINY's data.max_documents=200 reads every row; the text is in column 'review'.
    return ["pretrain", f"run_dir={run_dir}", f"teacher.path={teacher}",
            f"data.corpus={corpus_ref}", "data.text_column=review", *TINY, *extra]


def test_corpus_from_saved_dataset_or_parquet_trains_the_same_and_resumes_exactly(
        tmp_path, tiny_teacher, corpus):
    # Both layouts hold the same rows in the same order: the same examples, the same run.
    assert list(iter_documents(str(corpus / "saved"), "review")) == \
        list(iter_documents(str(corpus / "parquet" / "*.parquet"), "review")) == \
        list(iter_documents(str(corpus / "parquet"), "review"))
    straight = tmp_path / "straight"
    run_cli(*_pretrain(straight, tiny_teacher, corpus / "parquet" / "*.parquet", "steps=24",
                       "save_every=100", "export=false"))

    run_dir = tmp_path / "killed"
    args = _pretrain(run_dir, tiny_teacher, corpus / "saved", "steps=24", "save_every=4",
                     "export=false")
    proc = subprocess.Popen([sys.executable, "-m", "jaxdistill.cli", *args], cwd=REPO,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    ckpts = run_dir / "checkpoints"
    while not (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir())):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=300)
    stopped_at = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert stopped_at < 24, "the run finished before it was killed; the test proves nothing"
    run_cli(*args)  # the same command resumes, the data iterator's position included
    assert loss_columns(read_metrics(run_dir)) == loss_columns(read_metrics(straight))
    a, b = final_params(run_dir), final_params(straight)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    assert manifest["settings"]["corpus"] == str((corpus / "saved").resolve())


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    """Rotten Tomatoes as a DatasetDict with a ClassLabel whose names are in the other order
    than the preset's, saved with save_to_disk and in the Hub's Parquet layout."""
    root = tmp_path_factory.mktemp("hf_task")
    data = tasks.load_task(TaskConfig(name="rotten_tomatoes", max_train_examples=300,
                                      max_dev_examples=100))
    label = datasets.ClassLabel(names=["positive", "negative"])

    def split(examples):
        return datasets.Dataset.from_dict(
            {"sentence": [e.text_a for e in examples], "polarity": [1 - e.label for e in examples]},
            features=datasets.Features({"sentence": datasets.Value("string"), "polarity": label}))

    splits = datasets.DatasetDict({"train": split(data.train), "validation": split(data.dev)})
    splits.save_to_disk(str(root / "saved"))
    (root / "hub" / "data").mkdir(parents=True)
    splits["train"].to_parquet(str(root / "hub" / "data" / "train-00000-of-00001.parquet"))
    splits["validation"].to_parquet(str(root / "hub" / "data" /
                                         "validation-00000-of-00001.parquet"))
    return root, data


def test_task_from_saved_dataset_and_hub_parquet_layout(tmp_path, tiny, task_data):
    root, expected = task_data
    keys = dict(name="rotten_tomatoes", text_a_column="sentence", label_column="polarity")
    for source in (root / "saved", root / "hub"):
        data = tasks.load_task(TaskConfig(source=str(source), **keys))
        # Class names, not ids, decide the label: 'negative' is 0 in the preset.
        assert data.train == expected.train and data.dev == expected.dev, source
    # No validation split under that name: dev_split of train is held out.
    held = tasks.load_task(TaskConfig(source=str(root / "saved"), dev_split_name="test", **keys))
    assert len(held.dev) == 30 and len(held.train) == 270

    out = json.loads(run_cli("finetune", f"run_dir={tmp_path / 'run'}", f"student.init={tiny}",
                             f"task.source={root / 'hub'}", "task.text_a_column=sentence",
                             "task.label_column=polarity", *TINY_TASK, "steps=4",
                             "eval_every=4").stdout.strip().splitlines()[-1])
    assert 0 <= out["best_dev_accuracy"] <= 1


def test_bad_datasets_exit_2_naming_the_problem(tmp_path, task_data, corpus):
    root, _ = task_data
    missing = run_cli("finetune", f"run_dir={tmp_path / 'a'}", f"task.source={root / 'saved'}",
                      "task.text_a_column=sentence", "task.label_column=label", *TINY_TASK,
                      check=False)
    said = " ".join(missing.stderr.split())
    assert missing.returncode == 2 and "no column 'label'" in said and "polarity" in said, said
    assert "task.label_column" in said

    text = run_cli("prepare-data", f"data.corpus={corpus / 'saved'}", "data.text_column=text",
                   f"data.prepared_dir={tmp_path / 'p'}", *TINY, check=False)
    said = " ".join(text.stderr.split())
    assert text.returncode == 2 and "no column 'text'" in said and "review" in said, said

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset_dict.json").write_text('{"splits": ["train"]}')  # its split dir is gone
    proc = run_cli("finetune", f"run_dir={tmp_path / 'b'}", f"task.source={broken}",
                   *TINY_TASK, check=False)
    said = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "save_to_disk" in said and str(broken) in said, said
    for p in (missing, text, proc):
        assert "Traceback" not in p.stderr
