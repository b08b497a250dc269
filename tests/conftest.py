import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Tests import the shared builders in tests/helpers.py by name, and the benchmarks package from
# the repository root (plain `pytest` does not put the root on sys.path; `python -m pytest` does).
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from helpers import TINY, run_cli, tiny_task_args, write_tiny_teacher  # noqa: E402

# One persistent JAX compilation cache for the whole test run, in-process and in every
# `jaxdistill` subprocess a test starts (they inherit the environment): the tiny runs compile the
# same steps many times. Compiles of any length are kept. A cache dir set by the caller wins.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxdistill-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# `run_cli` runs most commands in this process: the same CPU backend, with one device, and the
# same hidden progress bars as the subprocesses it starts (tqdm reads TQDM_DISABLE at import).
os.environ.pop("XLA_FLAGS", None)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["TQDM_DISABLE"] = "1"


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    return write_tiny_teacher(tmp_path_factory.mktemp("teacher") / "bert", layers=4)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_teacher) -> Path:
    """Tokenized IMDB shards shared by a module's tiny runs (same tokenizer, seq_len, corpus)."""
    out = tmp_path_factory.mktemp("prepared")
    run_cli("prepare-data", f"teacher.path={tiny_teacher}", f"data.prepared_dir={out}", *TINY)
    return out


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A tiny random 2-layer BERT with the packaged tokenizer: the tiny task tests' encoder."""
    return write_tiny_teacher(tmp_path_factory.mktemp("tiny") / "bert", layers=2)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, tiny) -> Path:
    """A fine-tuned tiny classifier: the teacher of the tiny distillation tests."""
    run_dir = tmp_path_factory.mktemp("tiny_teacher") / "run"
    run_cli(*tiny_task_args(run_dir, tiny, "steps=12", "eval_every=6"))
    return run_dir


# The files whose tests take longest, longest first (measured on 2 cores, 6 December; the rest,
# each under a minute, follow in name order). pytest.ini turns off xdist's own reordering (by
# number of tests, which put the few long end-to-end files last), so a worker takes the next
# file in this order when it runs dry and the run does not end on one long file while the other
# worker idles. Order only: every file runs.
LONGEST_FIRST = ["test_pretrain.py", "test_finetune.py", "test_multihost.py", "test_cmlm.py",
                 "test_onnx.py", "test_fastbert.py", "test_mobilebert_method.py",
                 "test_bilstm.py", "test_minilm.py", "test_run_dir.py", "test_pipeline.py",
                 "test_hf_datasets.py", "test_mtdnn.py", "test_model.py",
                 "test_model_agnostic.py", "test_data_kinds.py"]


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file
