"""Inference beyond one forward pass: adaptive early exit (FastBERT's branches)."""
