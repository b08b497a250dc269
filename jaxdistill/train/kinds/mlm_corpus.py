"""The MLM corpus, `jaxdistill pretrain`: general distillation on a text corpus.

What is particular to it: the corpus is tokenized once into ArrayRecord shards (`prepare_data`),
batches come from the grain loader whose iterator state is checkpointed, the teacher defines the
vocabulary, and the final student is exported.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

import jax
from jax.experimental import multihost_utils

from jaxdistill import sharding
from jaxdistill.config import RunConfig
from jaxdistill.errors import UserError
from jaxdistill.train import loop
from jaxdistill.train.kinds.base import DataKind, register


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Corpus and masking. `corpus` is a local file/dir/glob, `package:imdb`, or `tfds:NAME`."""

    _RANGES: ClassVar[dict[str, str]] = {"max_documents": "[0, inf)", "mlm_probability": "(0, 1)",
                                          "mlm_smoothing": "[0, inf)", "num_workers": "[0, inf)",
                                          "prefetch": "[0, inf)"}

    corpus: str = "package:imdb"
    prepared_dir: str = ""  # default: <run_dir>/data
    format: str = "documents"  # 'documents' (packed) or 'pairs' (sentence pairs, NSP-style A/B)
    text_column: str = "text"
    max_documents: int = 0  # 0 = all
    mlm_probability: float = 0.15
    mlm_smoothing: float = 0.0  # DistilBERT: mask tokens with prob ~ freq^-smoothing (0.7); 0 = uniform
    num_workers: int = 0
    prefetch: int = 2


@dataclasses.dataclass(frozen=True)
class PretrainConfig(RunConfig):
    """`jaxdistill pretrain`: general distillation on a text corpus."""

    _RANGES: ClassVar[dict[str, str]] = {**RunConfig._RANGES, "steps": "[1, inf)"}

    data: DataConfig = DataConfig()

    def __post_init__(self):
        # Said when the recipe loads, not after the run: ONNX Runtime serves classifiers and
        # Seq2Seq students, and a general-distillation student is neither.
        if self.export.format == "onnx":
            raise ValueError("export.format: onnx exports a classifier or a Seq2Seq student; a "
                             "general-distillation student exports as a Hugging Face directory "
                             "(export.format: hf). Export its task-stage student to ONNX.")


BATCH_KEYS = ("input_ids", "attention_mask", "token_type_ids", "masked_positions", "masked_ids",
              "masked_weights")
BATCH_SPEC = dict.fromkeys(BATCH_KEYS, 2)
TEACHER_HINT = (" For an MLM head on the packaged MiniLM teacher run `jaxdistill pretrain "
                "--config configs/teacher_mlm.yaml` and point teacher.path at its run_dir.")


def build(cfg: PretrainConfig) -> loop.Setup:
    """Models by role, optimizer and shardings for a pretraining recipe."""
    mesh = sharding.make_mesh(cfg.mesh)
    roles = loop.build_roles(cfg, teacher_hint=TEACHER_HINT, student_from=cfg.teacher.path)
    return loop.assemble(cfg, mesh, roles, total_steps=cfg.steps, batch_spec=BATCH_SPEC)


def prepared_data_dir(cfg: PretrainConfig) -> Path:
    return Path(cfg.data.prepared_dir) if cfg.data.prepared_dir else Path(cfg.run_dir) / "data"


def prepare_data(cfg: PretrainConfig, tokenizer_dir: Path | None) -> Path:
    """Tokenize the corpus once (process 0), others wait; re-runs skip finished shards."""
    from jaxdistill.data.prepare import prepare

    out = prepared_data_dir(cfg)
    if tokenizer_dir is None:
        raise UserError(f"teacher.path={cfg.teacher.path} has no tokenizer files (vocab.txt or "
                        f"tokenizer.json); add them to the teacher directory.")
    if jax.process_index() == 0:
        prepare(cfg.data.corpus, out, tokenizer_dir, cfg.seq_len, format=cfg.data.format,
                max_documents=cfg.data.max_documents, seed=cfg.seed,
                text_column=cfg.data.text_column)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("prepare_data")
    return out


class CorpusSource:
    """The loop's data source: masked global batches from the grain loader (checkpointed state)."""

    spec = BATCH_SPEC

    def __init__(self, cfg: PretrainConfig, data_dir: Path):
        from jaxdistill.data.loader import make_loader

        self.loader = make_loader(data_dir, global_batch_size=cfg.batch_size, seed=cfg.seed,
                                  mlm_probability=cfg.data.mlm_probability,
                                  mlm_smoothing=cfg.data.mlm_smoothing,
                                  num_workers=cfg.data.num_workers)
        self.prefetch = cfg.data.prefetch

    def iterator(self, start: int, saved_state: bytes | None):
        if saved_state is not None:
            self.loader.set_state(saved_state)
        elif start:  # written by another process count: global batches are a function of the step
            self.loader.skip_to(start)
        return self.loader


def run(cfg: PretrainConfig) -> dict:
    """Train (or resume) to `cfg.steps`; returns a summary. Exact resume on the same mesh."""
    setup = build(cfg)
    loop.check_batch(cfg.batch_size, cfg.optimizer.grad_accum, setup.mesh)
    loop.start_run_dir(setup)
    source = CorpusSource(cfg, prepare_data(cfg, setup.roles.tokenizer_dir))
    return loop.run(loop.Job(setup, source, total_steps=cfg.steps, seq_len=cfg.seq_len,
                             predictions_per_seq=source.loader.max_predictions,
                             command="jaxdistill pretrain"))


register(DataKind("mlm_corpus", PretrainConfig, run,
                  "a text corpus (general distillation, `data`)", command="pretrain",
                  default_recipe="demo.yaml"))
