"""Architectures behind one `Model` interface (models/base.py), one file per kind.

Importing this package registers every kind shipped here; `build`, `from_meta` and
`model_class` look kinds up by name. A new architecture is a new file with a `@register`ed
`Model` subclass, imported below.
"""
from jaxdistill.models import bert, bilstm, mobilebert, seq2seq  # noqa: F401  (registers their kinds)
from jaxdistill.models.base import (EVERYTHING, NOTHING, REGISTRY, LayerByLayer, Model, Outputs,
                                    Wants, fill_params, from_meta, model_class, register)

__all__ = ["EVERYTHING", "NOTHING", "REGISTRY", "LayerByLayer", "Model", "Outputs", "Wants",
           "fill_params", "from_meta", "model_class", "register"]
