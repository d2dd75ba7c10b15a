"""Continual-learning methods, one file each; `base.Method` owns the shared step."""
