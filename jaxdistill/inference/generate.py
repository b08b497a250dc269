"""Text generation with a sequence-to-sequence model: jitted greedy or beam decoding of a batch,
WordPiece detokenisation, sacreBLEU, and decoding speed.

The model's `encode` and its decoder's cross-attention keys/values run once per batch; each
decoding step runs one position through the decoder against a fixed-length key/value cache
(`Seq2Seq.decode_step`), so one jitted step serves every position and beam search reorders the
cache with its beams.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from tqdm.auto import tqdm

from jaxdistill import sharding
from jaxdistill.data.placement import device_batches
from jaxdistill.inference import decode
from jaxdistill.models import Model

INPUT_KEYS = ("input_ids", "attention_mask")


def make_generate(model: Model, params_sh: Any, mesh: jax.sharding.Mesh, max_len: int,
                  beam_size: int = 1, length_penalty: float = 1.0,
                  length_penalty_form: str = "hf", no_repeat_ngram_size: int = 0
                  ) -> tuple[Callable[[Any, dict], jax.Array], dict]:
    """(jitted fn(params, {input_ids, attention_mask}) -> int32 [B, max_len] tokens, the batch
    shardings). beam_size 1 is greedy; length_penalty_form as decode.length_normaliser;
    no_repeat_ngram_size as decode.ban_repeated_ngrams."""
    cfg = model.config
    batch_sh = {k: sharding.batch_sharding(mesh, 2) for k in INPUT_KEYS}
    ids = dict(start_id=cfg.decoder_start_token_id, eos_id=cfg.eos_token_id,
               pad_id=cfg.pad_token_id, max_len=max_len, no_repeat_ngram_size=no_repeat_ngram_size)

    def generate(params, batch):
        with nn.logical_axis_rules(sharding.RULES):
            mask = batch["attention_mask"]
            memory = model.encode(params, batch["input_ids"], mask)
            state = {"cross": model.cross_kv(params, memory), "mask": mask}

            def logits_fn(state, tokens, t, cache):
                token = jax.lax.dynamic_index_in_dim(tokens, t, axis=1, keepdims=False)
                return model.decode_step(params, state["cross"], state["mask"], cache, token, t)

            cache = model.empty_cache(mask.shape[0], max_len)  # beam search repeats it per beam
            if beam_size == 1:
                return decode.greedy_search(logits_fn, state, cache=cache, **ids)
            tokens, _ = decode.beam_search(logits_fn, state, beam_size=beam_size,
                                           length_penalty=length_penalty, cache=cache,
                                           length_penalty_form=length_penalty_form, **ids)
            return tokens

    return jax.jit(generate, in_shardings=(params_sh, batch_sh),
                   out_shardings=sharding.replicated(mesh)), batch_sh


@functools.lru_cache(maxsize=8)
def _decoder(tokenizer_dir: str):
    from tokenizers import decoders

    from jaxdistill.data.tokenizer import load_tokenizer

    tok, info = load_tokenizer(tokenizer_dir)
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return tok, info


def detokenize(tokenizer_dir: str | Path, tokens: np.ndarray) -> list[str]:
    """Text of each row of generated ids, up to its first end token (specials dropped)."""
    tok, info = _decoder(str(tokenizer_dir))
    sep, specials = info.special_ids["sep"], set(info.special_ids.values())
    rows = []
    for row in np.asarray(tokens).tolist():
        row = row[:row.index(sep)] if sep in row else row
        rows.append([t for t in row if t not in specials])
    return tok.decode_batch(rows, skip_special_tokens=True)


def bleu(hypotheses: list[str], references: list[str]) -> float:
    """Corpus sacreBLEU (13a tokenisation) against lowercased references: the vocabulary is
    uncased, so every hypothesis is lowercase."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hypotheses, [[r.lower() for r in references]]).score)


def generate_texts(generate, batch_sh: dict, params: Any, arrays: dict[str, np.ndarray],
                   batch_size: int, tokenizer_dir: str | Path, bar: str | None = None
                   ) -> tuple[list[str], dict]:
    """(one output text per row of `arrays`, {sentences_per_sec, tokens_per_sec}) over the
    decoding calls alone; `bar` names a progress bar over the rows (none inside training, whose
    own bar is on screen)."""
    outputs, seconds, tokens = [], 0.0, 0
    eos = _decoder(str(tokenizer_dir))[1].special_ids["sep"]
    hidden = {} if bar else {"disable": True}  # else TQDM_DISABLE=1 hides it, as elsewhere
    with tqdm(total=len(arrays["input_ids"]), unit="sentence", desc=bar, dynamic_ncols=True,
              **hidden) as progress:
        for inputs, weights in device_batches(arrays, INPUT_KEYS, batch_sh, batch_size):
            t0 = time.perf_counter()
            out = np.asarray(jax.device_get(generate(params, inputs)))
            seconds += time.perf_counter() - t0
            out = out[weights > 0]
            outputs.append(out)
            tokens += int(np.sum(np.cumsum(out == eos, axis=1) == 0)) + int(np.sum(out == eos))
            progress.update(len(out))
    out = np.concatenate(outputs)
    seconds = max(seconds, 1e-9)
    return detokenize(tokenizer_dir, out), {"sentences_per_sec": len(out) / seconds,
                                            "tokens_per_sec": tokens / seconds}
