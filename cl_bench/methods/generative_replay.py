"""Deep generative replay with distillation."""

from __future__ import annotations

from dataclasses import dataclass

from cl_bench.methods.latent_replay import LatentReplay, LatentReplayConf
from cl_bench.schemas import defaults_from, schema


@schema("method", "generative_replay")
@dataclass
class GenerativeReplayConf(LatentReplayConf):
    per_class_prior: bool = False  # DGR: N(0, I) prior, unconditional sampling (Shin et al.)


@defaults_from(GenerativeReplayConf)
class GenerativeReplay(LatentReplay):
    """DGR (Shin et al., 2017, "Continual Learning with Deep Generative Replay") with the
    distillation targets of van de Ven & Tolias (2019, "Three scenarios for continual
    learning"): a VAE learns level 0 alone (the classifier's input, or the frozen
    extractor's output), by default with a N(0, I) prior sampled unconditionally and a
    sigmoid/BCE pixel output as in their code; its samples take the previous classifier's
    soft targets; current/replay losses are weighted 1/t, 1 - 1/t. In domain-IL every task
    shares the outputs, so the samples are distilled over all of them (their split-MNIST
    domain-IL runs)."""

    supported_scenarios = ("class_il", "task_il", "domain_il")
