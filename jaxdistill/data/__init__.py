"""Corpus reading, tokenization, MLM masking and loading.

Every pretraining batch is a dict of host NumPy arrays (process-local rows):
  input_ids        int32 [B, T]  token ids after MLM corruption (what both models read)
  attention_mask   int32 [B, T]  1 for real tokens, 0 for padding
  token_type_ids   int32 [B, T]  segment ids (0/1); all 0 for packed documents
  masked_positions int32 [B, P]  positions chosen for MLM prediction (padded with 0)
  masked_ids       int32 [B, P]  original token at each of those positions
  masked_weights   float32 [B, P] 1.0 for a real prediction, 0.0 for padding

Modules (importing this package imports none of them):
  corpus.py     documents (lists of sentences) from text/CSV/JSONL files, package:, tfds:
  text.py       HTML cleanup and sentence splitting
  tokenizer.py  the HF `tokenizers` WordPiece tokenizer (tokenizer.json or vocab.txt)
  instances.py  fixed-length examples: packed documents or BERT sentence pairs
  prepare.py    prepare(...): corpus -> ArrayRecord shards + manifest.json (resumable)
  records.py    record layout, manifest and token-count readers
  masking.py    BERT 80/10/10 MLM masking (optional DistilBERT frequency smoothing)
  loader.py     make_loader(...): grain, per-process shard, endless, checkpointable
"""
