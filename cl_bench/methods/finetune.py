"""Plain sequential fine-tuning: the lower bound."""

from cl_bench.methods.base import Method


class Finetune(Method):
    """Fine-tuning on each task in turn with no protection against forgetting."""

    supported_streams = ("task", "online", "task_free", "blurry")
