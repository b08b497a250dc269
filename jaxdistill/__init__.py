"""jaxdistill: knowledge distillation of BERT-family models in JAX/Flax."""
__version__ = "0.1.0"
