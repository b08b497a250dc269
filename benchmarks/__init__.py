"""Benchmarks of the jaxdistill train step (see benchmarks/RESULTS.md for measured figures).

`python -m benchmarks.distill_step --help` times one distillation step, optionally against the
same TinyBERT loss written with transformers' PyTorch BertModel (`--vs torch`), and reports the
sharding scaling on 8 fake CPU devices (`--scaling`). Nothing here imports JAX at import time:
the runner must set XLA_FLAGS (fake device count) before JAX starts.
"""
