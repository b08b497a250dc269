"""Distillation methods: one file each, registered in `base.REGISTRY` by importing them here."""
from __future__ import annotations

import difflib
from typing import Any

from jaxdistill.config import from_dict
from jaxdistill.errors import UserError
from jaxdistill.methods import distilbert, finetune, kd, mlm, pkd, tinybert  # noqa: F401
from jaxdistill.methods.base import REGISTRY, Method
from jaxdistill.models.bert import BertConfig


def build_method(name: str, options: dict[str, Any] | None, student: BertConfig,
                 teacher: BertConfig) -> Method:
    """The method `name` with validated `options`; bad names or values raise UserError."""
    cls = REGISTRY.get(name)
    if cls is None:
        match = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.5)
        hint = f" Did you mean '{match[0]}'?" if match else ""
        raise UserError(f"method.name: unknown method '{name}'.{hint} "
                        f"Valid methods: {', '.join(sorted(REGISTRY))}.")
    opts = from_dict(cls.Options, options or {}, where="method.options")
    try:
        return cls(opts, student, teacher)
    except ValueError as e:  # options that do not fit these two models (depths, widths)
        raise UserError(f"method.options: {e}.") from None
