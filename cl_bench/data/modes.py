"""Stream modes (`stream=task|online|task_free|blurry`): how a benchmark's tasks reach the
method. The benchmark's tasks still define evaluation (the accuracy matrix, the probes).

* `task`: task by task, boundaries announced (`before_task`/`after_task`), the budget's
  epochs and batches.
* `online`: one pass over each task's training set, every sample exactly once, in batches
  of `stream.batch_size` (budget.epochs and budget.iters give way); boundaries announced.
  Anytime accuracy comes from the continual evaluation every `eval.every` steps.
* `task_free` (van de Ven et al.'s task-free protocol, GMvandeVen/continual-learning
  `main_task_free.py`): the method is never told where boundaries are; the classes seen
  so far are tracked from the batches' labels.
* `blurry` (after van de Ven's fuzzy boundaries): neighbouring tasks exchange a fraction
  of their training samples, see `blur`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from cl_bench.data.stream import TaskStream
from cl_bench.errors import ConfigError
from cl_bench.schemas import schema

STREAM_MODES = ("task", "online", "task_free", "blurry")


@schema("stream", "stream")
@dataclass
class StreamConf:
    name: str = "task"  # task | online | task_free | blurry
    boundaries: bool = True  # false: no before_task/after_task (task-free)
    single_pass: bool = False  # every training sample exactly once (online)
    batch_size: int | None = None  # with single_pass; null: budget.batch_size
    width: float = 0.0  # blurry: fraction of a task length mixed around each boundary


def check_stream(conf) -> None:
    """Fails on a stream setting that makes no sense."""
    if conf.name not in STREAM_MODES:
        raise ConfigError(f"stream={conf.name} is not a stream mode; choose one of "
                          f"{', '.join(STREAM_MODES)}")
    if not 0 <= conf.width < 1:
        raise ConfigError(f"stream.width must be in [0, 1) (the fraction of a task length "
                          f"mixed around each boundary), got {conf.width}")
    if conf.batch_size is not None and conf.batch_size < 1:
        raise ConfigError(f"stream.batch_size must be >= 1 (or null), got {conf.batch_size}")


def is_default(conf) -> bool:
    """True for `stream=task` as shipped: the runner then behaves as before stream modes."""
    return dict(conf) == asdict(StreamConf())


def required_modes(conf) -> set[str]:
    """The modes a method (and each plugin) must declare in `supported_streams`: the
    stream's name, and `task_free` whenever the boundaries are hidden."""
    return {conf.name} | (set() if conf.boundaries else {"task_free"})


def sees_labels(conf) -> bool:
    """Whether the runner tracks the classes seen from the batches' labels: a batch may
    hold classes the announced task does not (blurry), or no task is announced."""
    return conf.width > 0 or not conf.boundaries


def blur(stream: TaskStream, width: float, seed: int) -> TaskStream:
    """Blurry boundaries: at the boundary between tasks t and t+1, round(width/2 * n_t + 0.5) of
    task t's n_t training samples train in segment t+1 and round(width/2 * n_{t+1}) of task
    t+1's in segment t, so the last width/2 of task t and the first width/2 of task t+1 mix
    and exactly that fraction of each task's samples crosses each of its boundaries. The
    movers are drawn with `seed` (a task's backward and forward movers are disjoint);
    within a segment the budget shuffles them with the rest every epoch (no ramp, unlike
    van de Ven's fuzzy boundaries, which mix by sampling probability). Every sample keeps
    its own label and task id (`Task.train_task`); the test and validation splits and the
    tasks' classes are the benchmark's."""
    if width == 0 or len(stream) < 2:
        return stream
    gen = torch.Generator().manual_seed(seed)
    parts: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = \
        [[] for _ in stream.tasks]
    last = len(stream) - 1
    for t, task in enumerate(stream.tasks):
        n = len(task.train_y)
        k = int(width / 2 * n + 0.5)
        if t not in (0, last) and 2 * k > n:
            raise ConfigError(f"stream.width={width} moves {2 * k} of task {t}'s {n} training "
                              "samples to its neighbours; lower it")
        order = torch.randperm(n, generator=gen)
        back = order[:k] if t > 0 else order[:0]
        fwd = order[len(back): len(back) + k] if t < last else order[:0]
        stay = order[len(back) + len(fwd):].sort().values
        ids = task.train_task if task.train_task is not None else \
            torch.full_like(task.train_y, task.id)
        for dest, idx in ((t - 1, back), (t, stay), (t + 1, fwd)):
            if len(idx):
                parts[dest].append((task.train_x[idx], task.train_y[idx], ids[idx]))
    tasks = [replace(task, train_x=torch.cat([p[0] for p in part]),
                     train_y=torch.cat([p[1] for p in part]),
                     train_task=torch.cat([p[2] for p in part]))
             for task, part in zip(stream.tasks, parts, strict=True)]
    return replace(stream, tasks=tasks)


def budget_overrides(conf, budget) -> dict:
    """The budget keys a single-pass stream replaces: one epoch, no iteration cap, no
    dropped last batch, batches of `stream.batch_size`."""
    if not conf.single_pass:
        return {}
    if budget.match is not None:
        raise ConfigError(f"stream={conf.name} trains one pass over each task, and "
                          "budget.match would draw further epochs; drop budget.match")
    return {"epochs": 1, "iters": None, "drop_last": False,
            "batch_size": conf.batch_size or budget.batch_size}
