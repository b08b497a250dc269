"""Datasets a teacher writes: a model runs over a dataset and writes a new one.

TinyBERT's augmentation (an MLM teacher proposes replacement words) is the first; ensemble soft
targets, top-K teacher logits and teacher-labelled variants belong here too. Each is a
`TeacherDataset` (base.py): a fixed list of input items and a batched, jitted `process` of a
chunk of them that depends only on the config and the chunk's position, so `write` can resume
after a crash chunk by chunk and the output is the same for a seed however often it stops.
"""
