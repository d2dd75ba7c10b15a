"""Datasets as in-memory uint8 tensors, task streams and batched preprocessing."""

from cl_bench.data.stream import Task, TaskStream

__all__ = ["Task", "TaskStream"]
