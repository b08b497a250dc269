"""Load a pretrained BERT-family model from any place a config may name.

A Hugging Face directory (config.json + weights), a jaxdistill run/checkpoint directory, or a
packaged model reference (`package:minilm`). Returns host NumPy params: the caller shards them.
"""
from __future__ import annotations

from pathlib import Path

import jax

from jaxdistill import assets, checkpoint
from jaxdistill.convert.hf_dir import TOKENIZER_FILES, init_head_params, read_hf_dir
from jaxdistill.errors import UserError
from jaxdistill.models.bert import BertConfig


def load_pretrained(ref: str, head: str = "auto", rng: jax.Array | None = None
                    ) -> tuple[BertConfig, dict, Path | None]:
    """(architecture, params, tokenizer directory) for `ref`.

    head: 'auto' keeps the checkpoint's head; otherwise the named head, which is freshly
    initialised from `rng` when the checkpoint lacks it (e.g. a new classifier).
    """
    path = assets.resolve_model_path(ref)
    if not path.exists():
        raise UserError(f"Model path {path} does not exist: expected a Hugging Face directory "
                        f"(config.json + model.safetensors), a jaxdistill run/checkpoint "
                        f"directory, or package:minilm.")
    if (path / "config.json").is_file():
        cfg, params = read_hf_dir(path, head=head, rng=rng)
        tokenizer = path if any((path / f).is_file() for f in TOKENIZER_FILES) else None
    else:
        cfg, params, tokenizer, _ = checkpoint.load_model(path)
    if head != "auto" and head != cfg.head:
        cfg, params = with_head(cfg, params, head, rng)
    return cfg, params, tokenizer


def with_head(cfg: BertConfig, params: dict, head: str, rng: jax.Array | None,
              num_labels: int | None = None) -> tuple[BertConfig, dict]:
    """Swap the model's head: keep the encoder (and pooler), initialise what the new head lacks."""
    new_cfg = cfg.replace(head=head, num_labels=num_labels or cfg.num_labels)
    fresh_needed = {"mlm": "mlm_head", "classifier": "classifier"}.get(head)
    if fresh_needed and fresh_needed not in params and rng is None:
        raise UserError(f"The model has no '{head}' head and none can be initialised here; "
                        f"give a checkpoint that has one.")
    fresh = init_head_params(new_cfg.replace(num_layers=0), rng) if rng is not None else {}
    out = {k: v for k, v in params.items() if k in ("embeddings", "encoder")}
    if new_cfg.flavor == "bert" and head != "mlm":
        out["pooler"] = params.get("pooler", fresh.get("pooler"))
    if fresh_needed:
        out[fresh_needed] = params.get(fresh_needed, fresh.get(fresh_needed))
    return new_cfg, out
