"""Distillation methods: one file each, registered in `base.REGISTRY` by importing them here."""
from __future__ import annotations

from typing import Any

from jaxdistill.config import from_dict
from jaxdistill.errors import lookup
from jaxdistill.errors import UserError
from jaxdistill.methods import (  # noqa: F401  (registers each method)
    bilstm, cmlm, distilbert, fastbert, finetune, kd, minilm, mlm, mobilebert, mtdnn, pkd,
    tinybert)
from jaxdistill.methods.base import REGISTRY, Method
from jaxdistill.models.base import Model


def method_class(name: str) -> type[Method]:
    return lookup(REGISTRY, name, "method.name", "method")


def parse_options(cls: type[Method], options: dict[str, Any] | None) -> Any:
    """The method's Options dataclass from `method.options`; bad keys or values: UserError."""
    return from_dict(cls.Options, options or {}, where="method.options")


def build_method(cls: type[Method], options: Any, models: dict[str, Model]) -> Method:
    """`cls(options, models)`; options that do not fit these models raise UserError."""
    try:
        return cls(options, models)
    except ValueError as e:  # depths, widths, label sets that do not fit
        raise UserError(f"method.options: {e}.") from None
