"""A fine-tuned classifier run over rows of text: the teacher of teacher-written datasets."""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.data import tasks
from jaxdistill.data.tasks import Example
from jaxdistill.errors import UserError
from jaxdistill.loading import load_pretrained

LENGTH_BUCKET = 16  # rows are padded to a multiple of this: a few compiled shapes


class TeacherLogits:
    """A fine-tuned classifier's logits on rows of text, batched and jitted."""

    def __init__(self, ref: str, num_labels: int, batch_size: int, seq_len: int):
        model, params, tok = load_pretrained(ref)
        if model.config.head != "classifier" or model.config.num_labels != num_labels:
            raise UserError(f"teacher={ref}: expected a fine-tuned classifier with {num_labels} "
                            f"labels, found head '{model.config.head}' with "
                            f"{model.config.num_labels} labels. `jaxdistill finetune` writes one "
                            f"(configs/task/teacher.yaml -> runs/task_teacher/best).")
        if tok is None:
            raise UserError(f"teacher={ref} has no tokenizer files to encode the rows with.")
        self.model, self.tok, self.num_labels = model, tok, num_labels
        self.batch_size, self.seq_len = batch_size, seq_len
        self.params = jax.device_put(params)
        self.keys = tuple(model.input_spec())
        self._predict = jax.jit(
            lambda p, b: model.apply(p, b, train=False).logits.astype(jnp.float32))

    def __call__(self, rows: Sequence[tuple[str, str | None]]) -> np.ndarray:
        """float32 [len(rows), num_labels]."""
        examples = [Example(a, b, 0) for a, b in rows]
        arrays = tasks.encode(examples, self.tok, self.seq_len, self.num_labels == 1)
        lengths = arrays["attention_mask"].sum(1)
        if "attention_mask_b" in arrays:
            lengths = np.maximum(lengths, arrays["attention_mask_b"].sum(1))
        order = np.argsort(lengths, kind="stable")
        out = np.zeros((len(rows), self.num_labels), np.float32)
        for start in range(0, len(rows), self.batch_size):
            idx = order[start:start + self.batch_size]
            width = min(self.seq_len, -(-int(lengths[idx].max()) // LENGTH_BUCKET) * LENGTH_BUCKET)
            batch = {k: np.zeros((self.batch_size, width), np.int32) for k in self.keys}
            for k in self.keys:
                batch[k][:len(idx)] = arrays[k][idx, :width]
            out[idx] = np.asarray(self._predict(self.params, batch))[:len(idx)]
        return out
