"""Weights & Biases logging under the same metric names as the CSV files."""

from __future__ import annotations

import os
from pathlib import Path


def wandb_mode(requested: str) -> str:
    """`auto`: online only when the user configured W&B (an API key in the environment
    or in ~/.netrc), offline otherwise, so runs never need an account or a network."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


class WandbLogger:
    """One W&B run per Hydra job, grouped by sweep, finished when the job ends."""

    def __init__(self, run_dir, config: dict, name: str, project: str = "clbench",
                 entity: str | None = None, mode: str = "auto", group: str | None = None,
                 tags: list | None = None):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=project, entity=entity, mode=wandb_mode(mode), dir=str(run_dir),
            config=config, name=name, group=group, tags=list(tags or []), reinit="finish_previous",
        )
        self.run.define_metric("step")
        self.run.define_metric("curve/*", step_metric="step")
        self.run.define_metric("train/*", step_metric="step")

    def log_acc_rows(self, rows):
        for r in rows:
            self.run.log({f"acc_matrix/t{r['train_task']}_e{r['eval_task']}": r["accuracy"]})

    def log_curve_rows(self, rows):
        if rows:
            data = {"step": rows[0]["step"]}
            data.update({f"curve/task{r['eval_task']}": r["accuracy"] for r in rows})
            self.run.log(data)

    def log_train_rows(self, rows):
        for r in rows:
            self.run.log({"step": r["step"], "train/loss": r["loss"],
                          "train/flops_cumulative": r["flops_cumulative"]})

    def log_summary(self, summary):
        self.run.summary.update({k: v for k, v in summary.items() if v is not None})

    def close(self):
        self.run.finish()
