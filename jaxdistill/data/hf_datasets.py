"""Hugging Face `datasets` on disk as a corpus or task source, read with the `datasets` library.

Two layouts are recognised: a `save_to_disk` directory (a Dataset: state.json and
dataset_info.json; a DatasetDict: dataset_dict.json and one directory per split) and Parquet or
Arrow files (one file, a glob, or a directory of them: the Hub's layout, where file names such as
`train-00000-of-00004.parquet` and `validation-...` name the splits). Rows are read in order,
a batch at a time: a saved dataset is memory-mapped and files stream (`streaming=True`), so a
corpus is never held whole in host memory.
"""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Iterator

from jaxdistill.errors import UserError

SUFFIXES = (".parquet", ".arrow")
BUILDERS = {".parquet": "parquet", ".arrow": "arrow"}
BATCH_ROWS = 1000


def is_saved_dataset(path: Path) -> bool:
    """A `save_to_disk` directory (a Dataset or a DatasetDict)."""
    return path.is_dir() and ((path / "dataset_dict.json").is_file()
                              or (path / "state.json").is_file()
                              or (path / "dataset_info.json").is_file())


def dataset_files(spec: str) -> list[Path]:
    """The Parquet/Arrow files `spec` names (a file, a glob or a directory searched recursively);
    [] when it names none."""
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    return [f.resolve() for f in files if f.suffix.lower() in SUFFIXES]


def _library():
    try:
        import datasets
    except ImportError:
        raise UserError("Reading a Hugging Face dataset needs the `datasets` package: "
                        "pip install datasets.") from None
    datasets.disable_progress_bars()
    return datasets


def load_saved(path: Path, where: str) -> Any:
    """`datasets.load_from_disk` (memory-mapped), with a clear error for a broken directory."""
    datasets = _library()
    try:
        return datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, KeyError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{where}: {path} looks like a `save_to_disk` directory but `datasets` "
                        f"cannot read it ({first}). Give the directory that "
                        f"Dataset.save_to_disk or DatasetDict.save_to_disk wrote, or Parquet "
                        f"files.") from None


def split_of(saved: Any, split: str, where: str, required: bool = True) -> Any:
    """One split of a DatasetDict (a plain Dataset is its own 'train' split)."""
    datasets = _library()
    if isinstance(saved, datasets.Dataset):
        return saved if split == "train" else None
    if split in saved:
        return saved[split]
    if required:
        raise UserError(f"{where}: the dataset has no split '{split}'; its splits are "
                        f"{', '.join(saved)}.")
    return None


def stream_files(files: list[Path], where: str, split: str = "train") -> Any:
    """An IterableDataset over Parquet or Arrow files (one format), in file order."""
    fmt = _format_of(files, where)
    try:
        return _library().load_dataset(fmt, data_files={split: [str(f) for f in files]},
                                       split=split, streaming=True)
    except (OSError, ValueError) as e:
        raise _unreadable(where, fmt, e) from None


def _unreadable(where: str, fmt: str, e: Exception) -> UserError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return UserError(f"{where} cannot be read as {fmt.capitalize()} ({first}); give files "
                     f"that `datasets` reads, or a save_to_disk directory.")


def stream_splits(directory: Path, where: str) -> dict[str, Any]:
    """{split: IterableDataset} of a directory of Parquet/Arrow files, the splits named by the
    files as `datasets` infers them (train-*, validation-*, test-*; anything else is train)."""
    fmt = _format_of(dataset_files(str(directory)), f"{where}: {directory}")
    return dict(_library().load_dataset(fmt, data_dir=str(directory), streaming=True))


def _format_of(files: list[Path], where: str) -> str:
    """The `datasets` builder of files that are all Parquet or all Arrow."""
    formats = {BUILDERS[f.suffix.lower()] for f in files}
    if len(formats) != 1:
        raise UserError(f"{where}: " + ("holds no Parquet or Arrow files" if not formats
                                        else "mixes Parquet and Arrow files; give one format") + ".")
    return formats.pop()


def columns_of(dataset: Any, where: str = "the dataset") -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None:  # a stream without a schema: read it from the first row
        try:
            first = next(iter(dataset), None)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise _unreadable(where, "Parquet/Arrow", e) from None
        names = list(first) if first is not None else []
    return list(names)


def require_columns(dataset: Any, needed: dict[str, str], where: str) -> None:
    """needed: {recipe key: column}; exit 2 naming the first missing one and the columns."""
    columns = columns_of(dataset, where)
    for key, column in needed.items():
        if column not in columns:
            raise UserError(f"{where}: no column '{column}'; its columns are "
                            f"{', '.join(columns) or '(none)'}. Set {key} to the column that "
                            f"holds it.")


def label_names(dataset: Any, column: str) -> list[str] | None:
    """The class names of a ClassLabel column (its integers index them), else None."""
    feature = (getattr(dataset, "features", None) or {}).get(column)
    return list(feature.names) if hasattr(feature, "names") else None


def rows(dataset: Any, columns: list[str], where: str = "the dataset") -> Iterator[dict]:
    """The rows of a Dataset or IterableDataset, only `columns`, a batch at a time."""
    batches = iter(dataset.select_columns(columns).iter(batch_size=BATCH_ROWS))
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, ValueError) as e:  # a later shard that is not Parquet/Arrow
            raise _unreadable(where, "Parquet/Arrow", e) from None
        yield from (dict(zip(batch, values)) for values in zip(*batch.values()))
