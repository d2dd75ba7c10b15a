"""Accuracy matrix metrics and the evaluator."""
