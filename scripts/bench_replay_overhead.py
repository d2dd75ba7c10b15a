"""Replay overhead: time of the memory's part of an ER step (sampling the replay batch
plus inserting the incoming batch) against the whole step, on split MNIST, in one process.

    CLBENCH_DATA=../shared/data python scripts/bench_replay_overhead.py [--memory reservoir]

ER with the default MLP (784-400-400-10), SGD, batch 10 + 10 replayed, memory of 5,000
samples filled from the stream first. Blocks of `--steps` full ER steps (`observe`) and
blocks of the same number of sample + add calls alone alternate, `--repeats` times; the
script prints the median per-step times and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from cl_bench.cli import CONF_DIR
from cl_bench.data.batch import Batch
from cl_bench.data.transforms import Preprocess
from cl_bench.experiment import build_memory, build_stream, instantiate_part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory", default="reservoir")
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["benchmark=split_mnist", "method=er",
                                           f"memory={args.memory}", f"memory.size={args.size}",
                                           "device=cpu"])
    stream = build_stream(cfg)
    preprocess = Preprocess(stream.mean, stream.std, "cpu")
    model = instantiate_part(cfg.model, input_shape=stream.input_shape,
                             n_classes=stream.n_classes)
    with tempfile.TemporaryDirectory() as run_dir:
        memory = build_memory(cfg, "cpu", Path(run_dir))
        method = instantiate_part(cfg.method, model=model, optimizer=instantiate(cfg.optimizer),
                                  memory=memory, preprocess=preprocess,
                                  class_mask=stream.class_mask(), scenario="class_il")
        task = stream.tasks[0]
        data = Batch(task.train_x, task.train_y, torch.zeros_like(task.train_y))
        for b in range(0, len(data), 10):  # fill the memory (12,665 samples offered)
            memory.add(data[b : b + 10])
        gen = torch.Generator().manual_seed(0)
        # the incoming batches are gathered up front: fetching them is the runner's work
        batches = [data[i] for i in
                   (torch.randint(0, len(data), (10,), generator=gen) for _ in range(args.steps))]
        step_times, memory_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for batch in batches:
                method.observe(batch)
            step_times.append((time.perf_counter() - start) / args.steps)
            start = time.perf_counter()
            for batch in batches:
                memory.sample(method.replay_batch_size)
                memory.add(batch)
            memory_times.append((time.perf_counter() - start) / args.steps)
        if hasattr(memory, "close"):
            memory.close()
    step, mem = statistics.median(step_times), statistics.median(memory_times)
    print(f"memory={args.memory} size={args.size} threads={torch.get_num_threads()}: "
          f"ER step {step * 1e6:.0f} us, sample+add {mem * 1e6:.0f} us, "
          f"ratio {mem / step:.3%}")


if __name__ == "__main__":
    main()
