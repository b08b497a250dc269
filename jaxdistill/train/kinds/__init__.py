"""Kinds of training data (base.py): the MLM corpus, one classification task, several tasks at
once, a sequence-to-sequence task. Importing this package registers each; a method names the
kind it trains on (`Method.data_kind`) and the commands look it up here."""
from __future__ import annotations

from jaxdistill.train.kinds import mlm_corpus, multitask, seq2seq, task  # noqa: F401  (registers)
from jaxdistill.train.kinds.base import (REGISTRY, DataKind, EvaluateRequest, kind_named,
                                         kind_of_method, load, register)

__all__ = ["REGISTRY", "DataKind", "EvaluateRequest", "kind_named", "kind_of_method", "load",
           "register"]
