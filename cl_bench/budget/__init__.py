"""Compute budgets and FLOP accounting."""
