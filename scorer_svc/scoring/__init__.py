"""Scoring checkpoints: the worker, the scoring model, batches, ranks and the budget."""
