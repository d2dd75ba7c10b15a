"""Deep generative replay with distillation."""

from __future__ import annotations

from cl_bench.methods.latent_replay import LatentReplay


class GenerativeReplay(LatentReplay):
    """DGR (Shin et al., 2017, "Continual Learning with Deep Generative Replay") with the
    distillation targets of van de Ven et al. (2020): generated inputs are replayed at
    level 0 (the classifier's input, or the frozen extractor's output) and take the
    previous classifier's soft targets; current/replay losses are weighted 1/t, 1 - 1/t."""
