"""Joint training on everything seen so far: the upper bound."""

from __future__ import annotations

from cl_bench.methods.base import Method


class Joint(Method):
    """Trains task t on the union of the training sets of tasks 1..t (the usual upper
    bound of CL papers, e.g. the 'Joint' row of Buzzega et al., 2020)."""

    supported_streams = ("task", "blurry")  # every step draws from earlier tasks' samples too

    def __init__(self, **kw):
        super().__init__(**kw)
        self._parts: list = []

    def train_data(self, task):
        self._parts.append(super().train_data(task))
        return self._parts[0].cat(*self._parts[1:])

    def resume_task(self, task):
        self._parts.append(super().train_data(task))
