"""Evaluation: cross-modal retrieval and zero-shot classification, with chance levels beside scores."""
