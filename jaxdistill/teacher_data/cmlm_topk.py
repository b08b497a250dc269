"""C-MLM's teacher soft targets: `jaxdistill augment` with method cmlm_topk.

Distill-BERT-Textgen's `dump_teacher_topk.py`: every training pair is replicated `copies` times,
copy c masking the target slots j with j % copies == c (data/seq2seq.py `modk_copies`), so the
conditional-MLM teacher predicts every target slot exactly once with the rest of the target in
view. At each slot its logits over the student's vocabulary (the teacher's pieces of the
training text: the reference's output layer over the Seq2Seq vocabulary, initialised from BERT's
by string match, is exactly that restriction here) give the `top_k` largest, stored with their
student ids. One jitted function does forward, gather and top-K for a fixed batch of copies;
copies are batched by length and each batch cut to its longest (a few compiled widths).

Output: the chunked, resumable JSONL of teacher_data/base.py, a row per training pair in the
task's order ({"target_ids", "topk_ids", "topk_logits"}), and the student's vocabulary in
`data.seq2seq.vocabulary_dir(out)`, which the student stage reads.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import ClassVar
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import loading, sharding
from jaxdistill.config import MeshConfig, TaskConfig, check_ranges
from jaxdistill.data import seq2seq as s2s
from jaxdistill.data import tasks
from jaxdistill.errors import UserError
from jaxdistill.models.base import Wants
from jaxdistill.teacher_data.base import TeacherDataset, WriterSpec, register, write

@dataclasses.dataclass(frozen=True)
class CmlmTopKConfig:
    """`jaxdistill augment` with method: cmlm_topk: C-MLM's teacher soft targets. Every training
    pair is copied `copies` times, copy c masking the target slots j with j % copies == c (each
    slot masked exactly once); the conditional-MLM teacher's `top_k` largest logits over the
    student's vocabulary, and their ids, are stored per target slot. The student's vocabulary
    (the teacher's pieces of the training text) is written beside `out`."""

    _RANGES: ClassVar[dict[str, str]] = {"copies": "[1, inf)", "top_k": "[1, inf)",
                                          "batch_size": "[1, inf)", "seq_len": "[3, inf)",
                                          "target_len": "[2, inf)", "chunk_size": "[1, inf)"}

    method: str = "cmlm_topk"
    out: str = "runs/cmlm/topk.jsonl"
    teacher: str = "runs/cmlm_teacher/best"  # a run of configs/task/cmlm_teacher.yaml
    task: TaskConfig = TaskConfig(name="wordnet_definitions")
    copies: int = 7
    top_k: int = 8
    batch_size: int = 128  # teacher forward batch (masked copies)
    seq_len: int = 24  # the source's slots, as the teacher was trained
    target_len: int = 24
    chunk_size: int = 2000  # pairs per resumable part of the output


class TopKTargets(TeacherDataset):
    def __init__(self, cfg: CmlmTopKConfig, task: s2s.Seq2SeqTask, teacher_ref: str,
                 tokenizer_dir: Path, vocab_dir: Path):
        self.cfg, self.task = cfg, task
        self.tokenizer_dir = tokenizer_dir
        model, params, _ = loading.load_pretrained(teacher_ref)
        if model.config.head != "mlm":
            raise UserError(f"teacher={teacher_ref} has head '{model.config.head}'; the top-K "
                            f"targets come from a conditional MLM (a run of "
                            f"configs/task/cmlm_teacher.yaml).")
        teacher_vocab = (Path(tokenizer_dir) / "vocab.txt").read_text().splitlines()
        index = {piece: i for i, piece in enumerate(teacher_vocab)}
        student_vocab = (vocab_dir / "vocab.txt").read_text().splitlines()
        missing = [p for p in student_vocab if p not in index]
        if missing:
            raise UserError(f"{vocab_dir}/vocab.txt has pieces the teacher's vocabulary lacks "
                            f"({', '.join(missing[:5])}); it belongs to another teacher.")
        # Student id -> teacher id, and back for the targets.
        self.columns = np.asarray([index[p] for p in student_vocab], np.int32)
        self.to_student = np.full(len(teacher_vocab), -1, np.int64)
        self.to_student[self.columns] = np.arange(len(self.columns))
        self.special = s2s.specials(tokenizer_dir)
        self.topk = self._compile(model, params)

    def _compile(self, model, params):
        mesh = sharding.make_mesh(MeshConfig())
        params_sh = sharding.shardings_for(model.logical_axes(), params, mesh)
        params = jax.device_put(params, params_sh)
        columns, k = jnp.asarray(self.columns), self.cfg.top_k
        wants = Wants(logits_at_masked=True)

        @jax.jit
        def topk(p, batch):
            with nn.logical_axis_rules(sharding.RULES):
                logits = model.apply(p, batch, wants=wants).logits  # [B, P, V_teacher]
            values, ids = jax.lax.top_k(jnp.take(logits.astype(jnp.float32), columns, axis=-1),
                                        k)
            return values, ids

        return lambda batch: jax.device_get(topk(params, batch))

    def items(self) -> Sequence[s2s.Pair]:
        return self.task.train

    def fingerprint(self) -> dict:
        return {**dataclasses.asdict(self.cfg), "pairs": len(self.task.train),
                "vocabulary": s2s.vocabulary_digest(s2s.vocabulary_dir(self.cfg.out))}

    def process(self, start: int, chunk: Sequence[s2s.Pair]) -> list[dict]:
        del start
        cfg = self.cfg
        arrays = s2s.encode_conditional(chunk, self.tokenizer_dir, cfg.seq_len, cfg.target_len)
        copies = s2s.modk_copies(arrays, cfg.copies, self.special.mask)
        width = arrays["target_count"].max()
        values = np.zeros((len(chunk), width, cfg.top_k), np.float32)
        ids = np.zeros((len(chunk), width, cfg.top_k), np.int32)
        keys = ("input_ids", "attention_mask", "token_type_ids", "masked_positions")
        # Copies of similar length share a batch, cut to its longest copy: each row's logits
        # are its own, and pairs average 21 of 48 slots.
        order = np.argsort(copies["attention_mask"].sum(1), kind="stable")
        for s in range(0, len(order), cfg.batch_size):
            rows_in = order[s:s + cfg.batch_size]
            part = tasks.cut_to_longest({k: copies[k][rows_in] for k in keys},
                                        s2s.CONDITIONAL_WIDTHS,
                                        s2s.WIDTH_MULTIPLE)
            real = len(rows_in)
            part = {k: np.concatenate([v, np.zeros((cfg.batch_size - real, *v.shape[1:]),
                                                   v.dtype)]) for k, v in part.items()}
            v, i = self.topk(part)
            for r, (row, slot) in enumerate(zip(copies["row"][rows_in],
                                                copies["target_slot"][rows_in])):
                keep = slot >= 0
                values[row, slot[keep]] = v[r][keep]
                ids[row, slot[keep]] = i[r][keep]
        out = []
        for j in range(len(chunk)):
            start, count = arrays["target_start"][j], arrays["target_count"][j]
            target = self.to_student[arrays["input_ids"][j, start:start + count]]
            out.append({"target_ids": target.tolist(),
                        "topk_ids": ids[j, :count].tolist(),
                        "topk_logits": np.round(values[j, :count].astype(np.float64), 4).tolist()})
        return out


def run(cfg: CmlmTopKConfig) -> dict:
    """Write cfg.out (and its vocabulary); returns counts and timings."""
    check_ranges(cfg)
    t0 = time.perf_counter()
    task = s2s.load_task(cfg.task)
    tokenizer_dir = loading.tokenizer_of(cfg.teacher)
    if tokenizer_dir is None or not (Path(tokenizer_dir) / "vocab.txt").is_file():
        raise UserError(f"teacher={cfg.teacher} has no vocab.txt: the student's vocabulary is "
                        f"a subset of the teacher's WordPiece vocabulary.")
    vocab_dir = s2s.write_vocabulary(tokenizer_dir, task.train, s2s.vocabulary_dir(cfg.out))
    dataset = TopKTargets(cfg, task, cfg.teacher, Path(tokenizer_dir), vocab_dir)
    stats = write(dataset, cfg.out, cfg.chunk_size, what="augment (method cmlm_topk)")
    return {"out": cfg.out, "vocabulary": str(vocab_dir),
            "vocab_size": len(dataset.columns), "task": task.name, "pairs": stats["rows"],
            "copies": cfg.copies, "top_k": cfg.top_k, "chunks": stats["chunks"],
            "resumed_chunks": stats["resumed"], "seconds": round(time.perf_counter() - t0, 1)}


register(WriterSpec("cmlm_topk", CmlmTopKConfig, run,
                     "task/cmlm_topk.yaml"))
