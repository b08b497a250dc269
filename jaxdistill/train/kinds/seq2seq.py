"""A sequence-to-sequence task (source -> target text), `jaxdistill finetune` with method cmlm,
and its evaluation.

The one loop (train/loop.py) with the task's batches, a pure function of the step as in the
classification stage, so the same command on the same run_dir resumes exactly:
- stage teacher: BERT as a conditional MLM. Batches are [CLS] X [SEP] Y [SEP] with target
  tokens masked afresh each step (seeded by (seed, step)); the dev evaluator scores one fixed
  masking of the dev pairs (masked-token accuracy, selects the best checkpoint).
- stage student: a Seq2Seq model on its own vocabulary (data/seq2seq.py: the teacher's pieces of
  the training text), with the teacher's top-K targets from `task.augmented` when alpha > 0; the
  dev evaluator decodes greedily and scores sacreBLEU.
`evaluate_model` is `jaxdistill evaluate` for both: BLEU (greedy or beam) and sample outputs of a
student, masked-token accuracy of a teacher.

A method that trains on this kind declares `data_kind` 'seq2seq' and its options carry `stage`
('teacher': the conditional MLM; else the Seq2Seq student), `mask_probability`, `alpha`,
`top_k` and `embeddings_from_teacher`, which choose the data and the student built here.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import config as config_lib, loading, models, sharding, significance
from jaxdistill.config import TaskConfig, TaskRunConfig
from jaxdistill.data import seq2seq as s2s
from jaxdistill.data import tasks
from jaxdistill.data.placement import device_batches
from jaxdistill.errors import UserError
from jaxdistill.inference import generate as gen
from jaxdistill.methods import build_method, method_class, parse_options
from jaxdistill.methods.base import STUDENT
from jaxdistill.train import loop
from jaxdistill.train.kinds.base import (DataKind, EvaluateRequest, StepSource, register,
                                         task_source, total_steps, train)

DEV_MASK_SEED = 20200501  # one fixed masking of the dev pairs, the same for every evaluation
MASK_KEYS = ("input_ids", "attention_mask", "token_type_ids", "masked_positions", "masked_ids",
             "masked_weights")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How a sequence-to-sequence student writes its outputs in `jaxdistill evaluate`
    (beam_size 1: greedy). Dev BLEU during training (checkpoint selection) is always greedy, one
    pass, and so is the export's generation_config.json."""

    _RANGES: ClassVar[dict[str, str]] = {"beam_size": "[1, inf)", "length_penalty": "[0, inf)",
                                          "samples": "[0, inf)", "length_penalty_form": "hf|wu",
                                          "no_repeat_ngram_size": "[0, inf)"}

    beam_size: int = 5  # Distill-BERT-Textgen's evaluation: beam 5, length penalty 0.6
    length_penalty: float = 0.6  # alpha of the length normaliser
    # 'hf': score = sum log p / n ** alpha (Hugging Face's); 'wu': / ((5 + n) / 6) ** alpha
    # (Wu et al. 2016; OpenNMT's, which the reference decodes with)
    length_penalty_form: str = "hf"
    # n > 0: no output holds an n-gram of pieces twice (Hugging Face's option of this name,
    # OpenNMT's block_ngram_repeat); 0, the reference's evaluation: no block
    no_repeat_ngram_size: int = 0
    samples: int = 5  # outputs printed with the scores


@dataclasses.dataclass(frozen=True)
class Seq2SeqRunConfig(TaskRunConfig):
    """`jaxdistill finetune` on a sequence-to-sequence task (method cmlm).

    target_len: the target's slots, its tokens and its end token (seq_len is the source's); the
    C-MLM teacher reads seq_len + target_len. decode: how `jaxdistill evaluate` writes outputs.
    """

    _RANGES: ClassVar[dict[str, str]] = {**TaskRunConfig._RANGES, "target_len": "[2, inf)",
                                          "length_pool": "[0, inf)"}

    task: TaskConfig = TaskConfig(name="wordnet_definitions")
    target_len: int = 32
    # > 0: training batches of pairs of similar length (OpenNMT's and fairseq's batching: pools
    # of this many batches sorted by length, the batches' order shuffled), each cut to its
    # longest pair rounded up to data.seq2seq.WIDTH_MULTIPLE slots. Definitions average 9 of 24
    # target slots, so full-width batches spend most of a step on padding. 0: shuffled
    # full-width batches.
    length_pool: int = 0
    decode: DecodeConfig = DecodeConfig()


# --------------------------------------------------------------------------------------------
# Stage teacher: conditional MLM


def masked_source(batches: tasks.TaskBatches, probability: float, predictions: int,
                  mask_id: int, seed: int) -> StepSource:
    """Task batches of [CLS] X [SEP] Y [SEP] whose target tokens are masked anew every step
    (seeded by (seed, step): a pure function of the step)."""
    def make(step: int) -> dict[str, np.ndarray]:
        return s2s.mask_targets(batches.arrays, batches.indices(step), probability, predictions,
                                np.random.default_rng([seed, step]), mask_id)

    return StepSource(make, {k: 2 for k in MASK_KEYS})


def masked_scores(model: models.Model, params_sh: Any, mesh: jax.sharding.Mesh):
    """Jitted (hits, nll sum, count) of an MLM over one batch's weighted masked positions."""
    batch_sh = {k: sharding.batch_sharding(mesh, 2) for k in MASK_KEYS}
    wants = models.Wants(logits_at_masked=True)

    def scores(params, batch):
        with nn.logical_axis_rules(sharding.RULES):
            logits = model.apply(params, batch, wants=wants).logits.astype(jnp.float32)
        w = batch["masked_weights"]
        logp = jax.nn.log_softmax(logits, -1)
        nll = -jnp.take_along_axis(logp, batch["masked_ids"][..., None], -1)[..., 0]
        hits = (jnp.argmax(logits, -1) == batch["masked_ids"]) * w
        return jnp.stack([hits.sum(), (nll * w).sum(), w.sum()])

    return jax.jit(scores, in_shardings=(params_sh, batch_sh),
                   out_shardings=sharding.replicated(mesh)), batch_sh


def masked_metrics(scores_fn, batch_sh: dict, params: Any, masked: dict[str, np.ndarray],
                   batch_size: int) -> dict[str, float]:
    total = np.zeros(3)
    for inputs, _ in device_batches(masked, MASK_KEYS, batch_sh, batch_size,
                                    weights_into="masked_weights"):
        total += np.asarray(jax.device_get(scores_fn(params, inputs)))
    hits, nll, count = total
    return {"masked_accuracy": hits / max(count, 1), "masked_ppl": float(np.exp(nll / max(count, 1))),
            "masked_tokens": int(count)}


def fixed_dev_masks(pairs: list[s2s.Pair], tokenizer_dir: Path, cfg: Seq2SeqRunConfig,
                    probability: float, predictions: int) -> dict[str, np.ndarray]:
    arrays = s2s.encode_conditional(pairs, tokenizer_dir, cfg.seq_len, cfg.target_len)
    mask_id = s2s.specials(tokenizer_dir).mask
    return s2s.mask_targets(arrays, np.arange(len(pairs)), probability, predictions,
                            np.random.default_rng(DEV_MASK_SEED), mask_id)


class MaskedDevEvaluator:
    metric = "masked_accuracy"
    higher_is_better = True

    def __init__(self, setup: loop.Setup, masked: dict[str, np.ndarray], batch_size: int):
        self.masked, self.batch_size = masked, batch_size
        self.scores, self.batch_sh = masked_scores(setup.student,
                                                   setup.state_sh.params["student"], setup.mesh)

    def __call__(self, student_params: Any) -> tuple[dict[str, float], float]:
        t0 = time.perf_counter()
        values = masked_metrics(self.scores, self.batch_sh, student_params, self.masked,
                                self.batch_size)
        return values, len(self.masked["input_ids"]) / max(time.perf_counter() - t0, 1e-9)


def _run_teacher(cfg: Seq2SeqRunConfig, task: s2s.Seq2SeqTask, options: Any) -> dict:
    roles = loop.build_roles(cfg)
    tok = roles.tokenizer_dir
    if tok is None:
        raise UserError(f"student.init={cfg.student.init} has no tokenizer files to encode the "
                        f"task with.")
    predictions = s2s.max_masked(cfg.target_len, options.mask_probability)
    arrays = s2s.encode_conditional(task.train, tok, cfg.seq_len, cfg.target_len)
    batches = tasks.TaskBatches(arrays, cfg.batch_size, cfg.seed,
                                lengths=arrays["attention_mask"].sum(1), pool=cfg.length_pool)
    source = masked_source(batches, options.mask_probability, predictions,
                           s2s.specials(tok).mask, cfg.seed)
    dev = fixed_dev_masks(task.dev, tok, cfg, options.mask_probability, predictions)
    header = (f"task {task.name}: {len(task.train)} train / {len(task.dev)} dev pairs; "
              f"conditional MLM over [CLS] X [SEP] Y [SEP] ({cfg.seq_len} + {cfg.target_len} "
              f"slots), {options.mask_probability:.0%} of Y masked")
    source, slots, header = cut_to_length(cfg, batches, source, s2s.CONDITIONAL_WIDTHS, header)
    return _train(cfg, roles, source, batches, MaskedDevEvaluator, dev, header,
                  seq_len=slots, predictions=predictions, task=task)


def cut_to_length(cfg: Seq2SeqRunConfig, batches: tasks.TaskBatches, source: StepSource,
                  groups: dict[str, tuple[str, ...]], header: str
                  ) -> tuple[StepSource, int, str]:
    """With cfg.length_pool (batches of pairs of similar length): `source` with every batch cut
    to its longest pair (tasks.cut_to_longest), the slots a row fills in a step (their mean over
    the first epoch, so that tokens/s and MFU count what a step computes) and the header saying
    so. Without: all three as they are, at the full width."""
    full = cfg.seq_len + cfg.target_len
    if not cfg.length_pool:
        return source, full, header
    cut = StepSource(lambda step: tasks.cut_to_longest(source.make(step), groups,
                                                       s2s.WIDTH_MULTIPLE), source.spec)
    mean = float(np.mean([sum(tasks.cut_width(batches.arrays[m][batches.indices(k)],
                                              s2s.WIDTH_MULTIPLE) for m in groups)
                          for k in range(batches.steps_per_epoch)]))
    return cut, max(1, round(mean)), header + (
        f"; batches of pairs of similar length (pools of {cfg.length_pool} batches), "
        f"{mean:.1f} of {full} slots per pair on average")


# --------------------------------------------------------------------------------------------
# Stage student: the Seq2Seq model

PAIR_KEYS = ("input_ids", "attention_mask", "decoder_input_ids", "labels", "label_weights")
SHUFFLE_SEED = 20200502  # one fixed permutation of the sources, the same for every evaluation


def pair_scores(model: models.Model, params_sh: Any, mesh: jax.sharding.Mesh):
    """Jitted [B, 3] (nll sum, target tokens, tokens whose argmax is the target) per pair of a
    seq2seq model over one batch, teacher-forced, without label smoothing."""
    batch_sh = {k: sharding.batch_sharding(mesh, 2) for k in PAIR_KEYS}

    def scores(params, batch):
        with nn.logical_axis_rules(sharding.RULES):
            logits = model.apply(params, batch).logits.astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, -1)
        nll = -jnp.take_along_axis(logp, batch["labels"][..., None], -1)[..., 0]
        w = batch["label_weights"]
        hits = (jnp.argmax(logits, -1) == batch["labels"]) * w
        return jnp.stack([(nll * w).sum(-1), w.sum(-1), hits.sum(-1)], axis=-1)

    return jax.jit(scores, in_shardings=(params_sh, batch_sh),
                   out_shardings=sharding.replicated(mesh)), batch_sh


def teacher_forced(scores_fn, batch_sh: dict, params: Any, arrays: dict[str, np.ndarray],
                   batch_size: int) -> np.ndarray:
    """float64 [N, 3] per pair of `arrays`: (nll sum, target tokens, target tokens ranked
    first), teacher-forced, no label smoothing."""
    rows = [np.asarray(jax.device_get(scores_fn(params, inputs)), np.float64)[weights > 0]
            for inputs, weights in device_batches(arrays, PAIR_KEYS, batch_sh, batch_size,
                                                  weights_into="label_weights")]
    return np.concatenate(rows)


def shuffled_sources(arrays: dict[str, np.ndarray], seed: int = SHUFFLE_SEED
                     ) -> dict[str, np.ndarray]:
    """The pairs with every row's source replaced by another row's (a fixed derangement: one
    cycle through a seeded permutation), targets unchanged."""
    n = len(arrays["input_ids"])
    if n < 2:
        raise UserError("shuffling sources across rows needs at least 2 pairs.")
    order = np.random.default_rng(seed).permutation(n)
    donor = np.empty(n, np.int64)
    donor[order] = np.roll(order, -1)
    return {**arrays, "input_ids": arrays["input_ids"][donor],
            "attention_mask": arrays["attention_mask"][donor]}


def source_reliance(scores_fn, batch_sh: dict, params: Any, arrays: dict[str, np.ndarray],
                    batch_size: int, true_rows: np.ndarray | None = None) -> dict[str, float]:
    """Cross entropy with the true sources and with sources shuffled across rows: a model that
    ignores its source scores the same on both (gap ~0); and the true sources' token accuracy
    (the share of target tokens the model ranks first, teacher-forced). true_rows: the true
    sources' `teacher_forced` rows, when the caller has them."""
    if true_rows is None:
        true_rows = teacher_forced(scores_fn, batch_sh, params, arrays, batch_size)
    true = true_rows.sum(0)
    shuffled = teacher_forced(scores_fn, batch_sh, params, shuffled_sources(arrays),
                              batch_size).sum(0)
    tokens = max(true[1], 1.0)
    return {"cross_entropy": float(true[0] / tokens),
            "cross_entropy_shuffled_sources": float(shuffled[0] / tokens),
            "source_gap": float((shuffled[0] - true[0]) / tokens),
            "token_accuracy": float(true[2] / tokens)}


class Seq2SeqDevEvaluator:
    """Greedy BLEU, distinct outputs and the cross entropy with true and shuffled sources. The
    best checkpoint is the one of lowest dev cross entropy: on a few hundred pairs greedy BLEU
    moves by noise between evaluations (docs/decisions.md)."""

    metric = "cross_entropy"
    higher_is_better = False

    def __init__(self, setup: loop.Setup, dev: tuple[dict[str, np.ndarray], list[str]],
                 batch_size: int):
        self.arrays, self.references = dev
        self.batch_size, self.tokenizer_dir = batch_size, setup.roles.tokenizer_dir
        params_sh = setup.state_sh.params["student"]
        self.generate, self.batch_sh = gen.make_generate(setup.student, params_sh, setup.mesh,
                                                         setup.cfg.target_len)
        self.scores, self.pair_sh = pair_scores(setup.student, params_sh, setup.mesh)

    def __call__(self, student_params: Any) -> tuple[dict[str, float], float]:
        texts, speed = gen.generate_texts(self.generate, self.batch_sh, student_params,
                                          self.arrays, self.batch_size, self.tokenizer_dir)
        reliance = source_reliance(self.scores, self.pair_sh, student_params, self.arrays,
                                   self.batch_size)
        return ({"bleu": gen.bleu(texts, self.references), "distinct_outputs": len(set(texts)),
                 **reliance}, speed["sentences_per_sec"])


def student_vocabulary(cfg: Seq2SeqRunConfig, task: s2s.Seq2SeqTask) -> Path:
    """run_dir/vocabulary: the top-K file's vocabulary when distilling (the teacher's ids were
    written in it), else built the same way from teacher.path's tokenizer."""
    out = Path(cfg.run_dir) / loop.VOCAB_DIR
    if cfg.task.augmented:
        src = s2s.vocabulary_dir(cfg.task.augmented)
        if not (src / "vocab.txt").is_file():
            raise UserError(f"task.augmented={cfg.task.augmented} has no vocabulary beside it "
                            f"({src}/vocab.txt); rerun `jaxdistill augment` method cmlm_topk.")
        if (out / "vocab.txt").is_file() and s2s.vocabulary_digest(out) != \
                s2s.vocabulary_digest(src):
            raise UserError(f"{out}/vocab.txt differs from {src}/vocab.txt: this run dir was "
                            f"started with other teacher data; use a new run_dir.")
        out.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.txt", "tokenizer_config.json"):
            shutil.copyfile(src / name, out / name)
        return out
    if not cfg.teacher.path:
        raise UserError("teacher.path is empty: the student's vocabulary is the teacher "
                        "tokenizer's pieces of the training text; name the C-MLM teacher (or "
                        "any model with that vocab.txt), e.g. runs/cmlm_teacher/best.")
    tok = loading.tokenizer_of(cfg.teacher.path)
    if tok is None:
        raise UserError(f"teacher.path={cfg.teacher.path} has no tokenizer files.")
    return s2s.write_vocabulary(tok, task.train, out)


def build_student(cfg: Seq2SeqRunConfig, vocab_dir: Path, method_cls, options) -> loop.Roles:
    if cfg.student.init not in ("default", "random"):
        raise UserError(f"student.init={cfg.student.init}: the C-MLM student starts from random "
                        f"weights on its own vocabulary (student.init: random).")
    sp = s2s.specials(vocab_dir)
    vocab_size = len((vocab_dir / "vocab.txt").read_text().splitlines())
    cls = models.model_class(cfg.student.kind)
    fields = {**cfg.student.architecture, "kind": cls.kind, "head": "lm",
              "vocab_size": vocab_size, "pad_token_id": sp.pad, "bos_token_id": sp.cls,
              "eos_token_id": sp.sep, "decoder_start_token_id": sp.cls}
    student = cls(config_lib.from_dict(cls.Config, fields, where="student"))
    model_set = {STUDENT: student}
    init = None
    if options.embeddings_from_teacher:
        init = jax.device_get(jax.jit(student.init)(jax.random.key(cfg.seed)))
        rows = teacher_word_rows(cfg.teacher.path, vocab_dir, student.config.d_model,
                                 student.config.init_std)
        init = student.with_word_embeddings(init, rows.astype(init["shared"].dtype))
    return loop.Roles(model_set, build_method(method_cls, options, model_set), {}, init,
                      vocab_dir)


def teacher_word_rows(teacher_ref: str, vocab_dir: Path, width: int, std: float
                      ) -> np.ndarray:
    """[student vocabulary, width]: the teacher's word-embedding row of each student piece (the
    student's pieces are the teacher's), through `models.base.projected_rows`."""
    if not teacher_ref:
        raise UserError("method.options.embeddings_from_teacher needs teacher.path (the model "
                        "whose word embeddings the student starts from).")
    model, params, tok = loading.load_pretrained(teacher_ref)
    table = np.asarray(model.word_embeddings(params), np.float32)
    teacher_vocab = {piece: i for i, piece in enumerate(
        (Path(tok) / "vocab.txt").read_text().splitlines())}
    pieces = (vocab_dir / "vocab.txt").read_text().splitlines()
    missing = [p for p in pieces if p not in teacher_vocab]
    if missing:
        raise UserError(f"{len(missing)} pieces of {vocab_dir}/vocab.txt (e.g. {missing[0]!r}) are "
                        f"not in {teacher_ref}'s vocabulary: the student's vocabulary was built "
                        f"from another teacher.")
    return models.base.projected_rows(table[[teacher_vocab[p] for p in pieces]], width, std)


def with_teacher_targets(cfg: Seq2SeqRunConfig, arrays: dict[str, np.ndarray], top_k: int
                         ) -> dict[str, np.ndarray]:
    """The training arrays with the top-K file's targets, checked row by row against them."""
    topk = s2s.read_topk(cfg.task.augmented)
    n, t = arrays["labels"].shape
    if len(topk["target_ids"]) != n:
        raise UserError(f"task.augmented={cfg.task.augmented} has {len(topk['target_ids'])} "
                        f"rows, the task's training split {n}: it was written for another "
                        f"task.* (max_train_examples, split_seed, source).")
    if topk["topk_ids"].shape[2] < top_k:
        raise UserError(f"method.options.top_k={top_k}, but {cfg.task.augmented} holds "
                        f"{topk['topk_ids'].shape[2]} entries per position.")
    # Both sides as ids with -1 past the target, padded to one width: they must be equal.
    width = max(t, topk["target_ids"].shape[1])
    widen = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=-1)  # noqa
    labels = np.where(arrays["label_weights"] > 0, arrays["labels"], -1)
    if not np.array_equal(widen(labels), widen(topk["target_ids"])):
        raise UserError(f"task.augmented={cfg.task.augmented}: its targets are not the training "
                        f"targets tokenized with target_len={cfg.target_len}; write it with the "
                        f"same task.* and target_len.")
    pad = lambda x: np.pad(x[:, :t], ((0, 0), (0, t - min(t, x.shape[1])), (0, 0)))  # noqa
    return {**arrays, "topk_ids": pad(topk["topk_ids"][..., :top_k]),
            "topk_logits": pad(topk["topk_logits"][..., :top_k])}


def _run_student(cfg: Seq2SeqRunConfig, task: s2s.Seq2SeqTask, method_cls, options) -> dict:
    if options.alpha > 0 and not cfg.task.augmented:
        raise UserError(f"method.options.alpha={options.alpha} distils from the teacher's top-K "
                        f"targets: name them in task.augmented (written by `jaxdistill augment "
                        f"--config configs/task/cmlm_topk.yaml`), or set alpha=0 for the "
                        f"teacher-free baseline.")
    vocab_dir = student_vocabulary(cfg, task)
    roles = build_student(cfg, vocab_dir, method_cls, options)
    arrays = s2s.encode_pairs(task.train, vocab_dir, cfg.seq_len, cfg.target_len)
    if options.alpha > 0:
        arrays = with_teacher_targets(cfg, arrays, options.top_k)
    # Sorted by the target's cut width, then the source's length: the decoder and the output
    # layer over the vocabulary cost most of a step, and the source still shortens.
    target_widths = -(-arrays["label_weights"].sum(1).astype(np.int64) // s2s.WIDTH_MULTIPLE)
    lengths = target_widths * (cfg.seq_len + 1) + arrays["attention_mask"].sum(1)
    batches = tasks.TaskBatches(arrays, cfg.batch_size, cfg.seed, lengths=lengths,
                                pool=cfg.length_pool)
    dev = (s2s.encode_pairs(task.dev, vocab_dir, cfg.seq_len, cfg.target_len),
           [p.target for p in task.dev])
    kd = (f"alpha {options.alpha}, top-{options.top_k} teacher logits at T={options.temperature}"
          if options.alpha > 0 else "no teacher (alpha 0)")
    header = (f"task {task.name}: {len(task.train)} train / {len(task.dev)} dev pairs; "
              f"seq2seq student, vocabulary {roles.models[STUDENT].config.vocab_size} pieces; "
              f"{kd}; " + ("best/ holds the last step" if cfg.select == "last"
                           else "best checkpoint by dev cross entropy"))
    source, slots, header = cut_to_length(cfg, batches, task_source(batches), s2s.PAIR_WIDTHS,
                                          header)
    return _train(cfg, roles, source, batches, Seq2SeqDevEvaluator, dev, header,
                  seq_len=slots, predictions=None, task=task)


# --------------------------------------------------------------------------------------------
# Both


def _train(cfg, roles, source, batches, evaluator_cls, dev, header, *, seq_len, predictions,
           task) -> dict:
    student = roles.models[STUDENT]
    longest, needed = student.max_seq_len(), (
        max(cfg.seq_len, cfg.target_len) if student.input_spec().get("decoder_input_ids")
        else cfg.seq_len + cfg.target_len)
    if longest is not None and needed > longest:
        raise UserError(f"seq_len={cfg.seq_len} and target_len={cfg.target_len} need {needed} "
                        f"positions; the '{student.kind}' model has {longest}. Shorten them or "
                        f"give the model more positions.")
    steps = total_steps(cfg, batches)
    summary = train(cfg, roles, source, total_steps=steps, seq_len=seq_len,
                    predictions_per_seq=predictions,
                    header=header + f"; {batches.steps_per_epoch} steps per epoch, {steps} steps",
                    evaluator=lambda setup: evaluator_cls(setup, dev, cfg.eval_batch_size))
    return {**summary, "task": task.name}


def run(cfg: Seq2SeqRunConfig) -> dict:
    """C-MLM's stage `method.options.stage` to the end; returns the loop's summary."""
    config_lib.check_ranges(cfg)
    method_cls = method_class(cfg.method.name)
    options = parse_options(method_cls, cfg.method.options)
    task = s2s.load_task(cfg.task)
    if options.stage == "teacher":
        if cfg.task.augmented:
            raise UserError("task.augmented is the student stage's teacher data; the teacher "
                            "stage trains on the task itself (leave it empty).")
        return _run_teacher(cfg, task, options)
    return _run_student(cfg, task, method_cls, options)


# --------------------------------------------------------------------------------------------
# `jaxdistill evaluate`


def evaluate_model(model_ref: str, cfg: Seq2SeqRunConfig, split: str = "dev",
                   predictions: str | None = None) -> dict:
    """A seq2seq student's BLEU (cfg.decode: greedy or beam), its cross entropy with true and
    with shuffled sources, distinct outputs, decoding speed and sample outputs (every output
    written to `predictions`, JSON Lines); or a conditional-MLM teacher's masked-token accuracy,
    on a split of the task."""
    model, params, tok = loading.load_pretrained(model_ref)
    if tok is None:
        raise UserError(f"{model_ref} has no tokenizer files.")
    task = s2s.load_task(cfg.task)
    pairs = task.split(split)
    mesh = sharding.make_mesh(config_lib.MeshConfig())
    params_sh = sharding.shardings_for(model.logical_axes(), params, mesh)
    params = jax.device_put(params, params_sh)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    head = {"model": str(model_ref), "task": task.name, "split": split, "pairs": len(pairs),
            "parameters": n_params, "device": jax.devices()[0].device_kind}
    if model.config.head == "mlm":
        options = parse_options(method_class(cfg.method.name), cfg.method.options)
        if predictions is not None:
            raise UserError(f"--predictions writes a seq2seq student's outputs; {model_ref} is a "
                            f"conditional-MLM teacher.")
        slots = s2s.max_masked(cfg.target_len, options.mask_probability)
        masked = fixed_dev_masks(pairs, tok, cfg, options.mask_probability, slots)
        scores, batch_sh = masked_scores(model, params_sh, mesh)
        with mesh:
            return {**head, **masked_metrics(scores, batch_sh, params, masked,
                                             cfg.eval_batch_size)}
    if model.config.head != "lm":
        raise UserError(f"{model_ref} is a '{model.kind}' model with head '{model.config.head}'"
                        f"; task {task.name} evaluates a seq2seq student or a C-MLM teacher.")
    d = cfg.decode
    how = "greedy" if d.beam_size == 1 else f"beam {d.beam_size}"
    print(f"jaxdistill evaluate: {how} decoding of {len(pairs)} {split} pairs of {task.name} "
          f"by {model_ref}, batch {cfg.eval_batch_size}", flush=True)
    began = time.perf_counter()
    arrays = s2s.encode_pairs(pairs, tok, cfg.seq_len, cfg.target_len)
    generate, batch_sh = gen.make_generate(model, params_sh, mesh, cfg.target_len,
                                           d.beam_size, d.length_penalty, d.length_penalty_form,
                                           d.no_repeat_ngram_size)
    with mesh:
        warm = {k: v[:cfg.eval_batch_size] for k, v in arrays.items()}
        gen.generate_texts(generate, batch_sh, params, warm, cfg.eval_batch_size, tok)  # compile
        texts, speed = gen.generate_texts(generate, batch_sh, params, arrays,
                                          cfg.eval_batch_size, tok, bar="decode")
        scores, pair_sh = pair_scores(model, params_sh, mesh)
        per_pair = teacher_forced(scores, pair_sh, params, arrays, cfg.eval_batch_size)
        reliance = source_reliance(scores, pair_sh, params, arrays, cfg.eval_batch_size,
                                   true_rows=per_pair)
    bleu = gen.bleu(texts, [p.target for p in pairs])
    print(f"done: BLEU {bleu:.2f}, {len(set(texts))} distinct outputs of {len(texts)}, source "
          f"gap {reliance['source_gap']:.3f} nats, token accuracy "
          f"{reliance['token_accuracy']:.3f}, in {(time.perf_counter() - began) / 60:.1f} min",
          flush=True)
    # Each pair's teacher-forced target tokens and how many the student ranks first: the paired
    # test of token accuracy (significance.compare_token_accuracy) resamples pairs.
    rows = [{"source": p.source, "reference": p.target, "output": t,
             "target_tokens": int(n), "target_tokens_right": int(right)}
            for p, t, (_, n, right) in zip(pairs, texts, per_pair)]
    written = {"predictions": significance.write_predictions(predictions, rows)} \
        if predictions else {}
    samples = rows[:d.samples]
    return {**head, f"{split}_bleu": bleu,
            **{f"{split}_{k}": v for k, v in reliance.items()}, "distinct_outputs": len(set(texts)),
            "bleu": "sacreBLEU 13a, lowercased references", "beam_size": d.beam_size,
            "length_penalty": d.length_penalty, "length_penalty_form": d.length_penalty_form,
            "no_repeat_ngram_size": d.no_repeat_ngram_size,
            "max_len": cfg.target_len,
            "batch_size": cfg.eval_batch_size, **speed, **written, "samples": samples}


def evaluate(cfg: Seq2SeqRunConfig, request: EvaluateRequest) -> dict:
    """`jaxdistill evaluate` of a seq2seq student (BLEU, ...) or a conditional-MLM teacher."""
    if request.speeds is not None:
        raise UserError("--speeds is FastBERT's adaptive inference of a classifier; a "
                        "sequence-to-sequence model has no exit branches.")
    return evaluate_model(request.model, cfg, split=request.split,
                          predictions=request.predictions)


register(DataKind("seq2seq", Seq2SeqRunConfig, run,
                  "a sequence-to-sequence task (`task`, `target_len`, `decode`)",
                  default_recipe="task/cmlm_student.yaml", evaluate=evaluate))
