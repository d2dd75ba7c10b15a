"""Weights & Biases logging under the same metric names as the CSV files.

W&B never costs a run: an unreachable server means offline logging (one warning), and a
W&B error later in the run turns W&B logging off (one warning) while the CSV files,
which hold everything, go on."""

from __future__ import annotations

import os
import socket
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_BASE_URL = "https://api.wandb.ai"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def wandb_mode(requested: str) -> str:
    """`auto`: WANDB_MODE when set, else online only when the user configured W&B (an API
    key in the environment or in ~/.netrc), offline otherwise, so runs never need an
    account or a network."""
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def base_url(wandb) -> str:
    """The server wandb would talk to (its settings file and WANDB_BASE_URL included)."""
    try:
        settings = wandb.Settings()
        settings.update_from_system_settings()
        settings.update_from_env_vars(dict(os.environ))
        return str(settings.base_url)
    except Exception:  # the settings API of another wandb version
        return os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)


def unreachable(url: str, timeout: float = 5.0) -> str | None:
    """Why a TCP connection to `url`'s host cannot be opened within `timeout` seconds
    (name lookup included), or None when it can or when a proxy is in the way (wandb's
    own init_timeout then decides)."""
    if any(os.environ.get(v) for v in PROXY_VARS):
        return None
    parsed = urlparse(url)
    host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    if host is None:
        return None
    outcome: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(f"{type(err).__name__}: {err}")

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:.0f} s"


class WandbLogger:
    """One W&B run per Hydra job, grouped by sweep, finished when the job ends."""

    def __init__(self, run_dir, config: dict, name: str, project: str = "clbench",
                 entity: str | None = None, mode: str = "auto", group: str | None = None,
                 tags: list | None = None, init_timeout: float = 15.0,
                 warn: Callable[[str], None] | None = None):
        import wandb

        self.wandb = wandb
        self.warn = warn or (lambda text: warnings.warn(text, stacklevel=2))
        self.run = None
        kwargs = dict(project=project, entity=entity, dir=str(run_dir), config=config,
                      name=name, group=group, tags=list(tags or []), reinit="finish_previous")
        mode = wandb_mode(mode)
        offline = (f"logging W&B offline instead (`wandb sync {run_dir}/wandb/offline-run-*` "
                   "uploads it later)")
        if mode == "online":
            url = base_url(wandb)
            problem = unreachable(url, timeout=min(5.0, init_timeout))
            if problem:
                self.warn(f"W&B server {url} unreachable ({problem}); {offline}")
                mode = "offline"
        try:
            self.run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=init_timeout),
                                  **kwargs)
        except Exception as err:
            if mode != "online":
                self.warn(f"W&B failed to start ({type(err).__name__}: {err}); the run "
                          "goes on without W&B (the CSV files hold everything)")
                return
            self.warn(f"W&B failed to start online ({type(err).__name__}: {err}); {offline}")
            self.run = self._safely(lambda: wandb.init(mode="offline", **kwargs))
        if self.run is not None:
            self._safely(self._define_metrics)

    def _define_metrics(self) -> None:
        self.run.define_metric("step")
        self.run.define_metric("train_task")
        self.run.define_metric("curve/*", step_metric="step")
        self.run.define_metric("train/*", step_metric="step")
        self.run.define_metric("acc_*", step_metric="train_task")

    def _safely(self, call):
        """`call()`, or None after turning W&B off with one warning when it raises."""
        try:
            return call()
        except Exception as err:
            self.warn(f"W&B logging failed ({type(err).__name__}: {err}); the run goes on "
                      "without W&B (the CSV files hold everything)")
            run, self.run = self.run, None
            if run is not None:
                try:
                    run.finish(exit_code=1, quiet=True)
                except Exception:
                    pass
            return None

    @staticmethod
    def _per_task(rows, prefix: str = "") -> dict:
        """{<prefix>acc_<scenario>/task<j>: value} for the scenarios the rows carry."""
        return {f"{prefix}{key}/task{r['eval_task']}": r[key] for r in rows
                for key in ("acc_class_il", "acc_task_il", "acc_domain_il")
                if r.get(key) is not None}

    def _log(self, data: dict) -> None:
        if self.run is not None:
            self._safely(lambda: self.run.log(data))

    def log_acc_rows(self, rows):
        if rows:
            self._log({"train_task": rows[0]["train_task"], **self._per_task(rows)})

    def log_curve_rows(self, rows):
        if rows:
            self._log({"step": rows[0]["step"], **self._per_task(rows, "curve/")})

    def log_train_rows(self, rows):
        for r in rows:
            self._log({"step": r["step"], "train/loss": r["loss"],
                       "train/flops_cumulative": r["flops_cumulative"]})

    def log_summary(self, summary):
        if self.run is not None:
            values = {k: v for k, v in summary.items() if v is not None}
            self._safely(lambda: self.run.summary.update(values))

    def close(self):
        if self.run is not None:
            self._safely(self.run.finish)
            self.run = None
