"""clbench: a config-driven continual-learning experiment runner."""

__version__ = "0.1.0"
