"""Frozen-model features and what is learnt on them: the embeddings cache (embeddings.py)
and head training with out-of-fold evaluation (head_training.py)."""
