import sys
from pathlib import Path

import pytest

# Tests import the shared builders in tests/helpers.py by name, and the benchmarks package from
# the repository root (plain `pytest` does not put the root on sys.path; `python -m pytest` does).
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from helpers import TINY, run_cli, write_tiny_teacher  # noqa: E402


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    return write_tiny_teacher(tmp_path_factory.mktemp("teacher") / "bert", layers=4)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_teacher) -> Path:
    """Tokenized IMDB shards shared by a module's tiny runs (same tokenizer, seq_len, corpus)."""
    out = tmp_path_factory.mktemp("prepared")
    run_cli("prepare-data", f"teacher.path={tiny_teacher}", f"data.prepared_dir={out}", *TINY)
    return out
