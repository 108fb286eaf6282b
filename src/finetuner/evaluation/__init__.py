"""Retrieval metrics, evaluation of a model on a dataset, and plots."""
