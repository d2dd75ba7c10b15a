"""Hydra entry point of `clbench`."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import textwrap
import threading
from collections.abc import Mapping
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, InstantiationException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cl_bench.config import pairs, register_schemas, tuned_optimizer
from cl_bench.errors import describe, user_error
from cl_bench.identity import run_id
from cl_bench.paths import CONF_DIR  # re-exported: `from cl_bench.cli import CONF_DIR`

# makes the directories of runs started in the same second distinct; new for every
# `main()` call, so two calls in one process (tests, notebooks) do not share a directory
_INVOCATION_UID = [secrets.token_hex(3)]


def option_groups(choices=None) -> str:
    """`clbench --help`'s list of the groups under conf/ and their options (the schemas
    registered in Hydra's ConfigStore are not choices), `*` on the ones in `choices`."""
    root, lines = Path(CONF_DIR), []
    groups = sorted({p.parent.relative_to(root).as_posix() for p in root.glob("*/**/*.yaml")})
    # a folder or file named _* holds parts of other options (experiment/_protocol/), not
    # choices; study/ is clbench-study's, hydra/sweeper/ the sweeper it sets itself
    hidden = ("hydra/help", "hydra/sweeper", "study")
    for group in (g for g in groups if g not in hidden and "/_" not in f"/{g}"):
        chosen = (choices or {}).get(group)  # Hydra records none for a list-valued group
        options = [p.stem + "*" * (p.stem == chosen) for p in sorted(root.glob(f"{group}/*.yaml"))
                   if not p.stem.startswith("_")]
        lines.append(textwrap.fill(", ".join(options), width=96, initial_indent=f"{group}: ",
                                   subsequent_indent="    ", break_on_hyphens=False))
    return "\n".join(lines)


def _optimizer(pair: str, method: str) -> str:
    """conf/config.yaml's optimizer choice when the command line names none: `adam` where
    conf/experiment/ has the published protocol `pair` (a preset named
    <benchmark>_<model>_<method>; chosen by an interpolation, it may not switch a group
    itself: Hydra forbids overrides there), else the method preset's `tuned_optimizer`
    (the optimizer its values were tuned with), else `sgd`."""
    if pair in pairs():
        return "adam"
    return tuned_optimizer(method) or "sgd"


def _per_scenario(scenario, values):
    """`${clbench_per_scenario:${scenario},{task_il: a, domain_il: b, class_il: c}}`: the
    value a published protocol uses in the run's scenario (e.g. a regularisation strength
    that the three-scenarios papers set per scenario)."""
    name = str(getattr(scenario, "value", scenario)).rsplit(".", 1)[-1]
    if name not in values:
        raise ValueError(f"this preset has no value for scenario={name}; it has "
                         f"{sorted(values)}: choose one of those scenarios")
    return values[name]


def _per_benchmark(benchmark, scenario, values):
    """`${clbench_per_benchmark:${benchmark.name},${scenario},{permuted_mnist: 100, other:
    {task_il: a, domain_il: b, class_il: c}}}`: a method preset's value on the run's
    benchmark (`other`: any benchmark not named), itself a number or one per scenario."""
    key = benchmark if benchmark in values else "other"
    if key not in values:
        raise ValueError(f"this preset has no value for benchmark={benchmark}; it has "
                         f"{sorted(values)}: choose one of those benchmarks")
    value = values[key]
    return _per_scenario(scenario, value) if isinstance(value, Mapping | DictConfig) else value


def _three_scenarios_order(seed: int, n_classes: int) -> list[int]:
    """`benchmark.class_order=${clbench_three_scenarios_order:${seed},10}`: the digits-to-tasks
    assignment van de Ven's code (GMvandeVen/continual-learning, data/load.py) makes for
    `seed`, for runs paired with it seed by seed: seed 0 keeps the labels in order, any other
    relabels y -> p[y] with p the first np.random.permutation after np.random.seed(seed), so
    the class at position i of the order is argsort(p)[i]."""
    if int(seed) == 0:
        return list(range(int(n_classes)))
    return np.argsort(np.random.RandomState(int(seed)).permutation(int(n_classes))).tolist()


OmegaConf.register_new_resolver("clbench_optimizer", _optimizer, replace=True)
OmegaConf.register_new_resolver("clbench_three_scenarios_order", _three_scenarios_order,
                                replace=True)
OmegaConf.register_new_resolver("clbench_per_scenario", _per_scenario, replace=True)
OmegaConf.register_new_resolver("clbench_per_benchmark", _per_benchmark, replace=True)
OmegaConf.register_new_resolver("clbench_uid", lambda: _INVOCATION_UID[0], replace=True)
OmegaConf.register_new_resolver("clbench_run_id", lambda *, _root_: run_id(_root_), replace=True)
OmegaConf.register_new_resolver(
    "clbench_groups", lambda *, _root_: option_groups(_root_.hydra.runtime.choices), replace=True)
register_schemas()


class DropEmptySweep(Callback):
    """Removes a sweep directory that holds no job: a `skip_done=true` rerun whose jobs
    were all done already (each job then removes its own fresh directory)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(str(config.hydra.sweep.dir))
        if sweep.is_dir() and all(p.name == "multirun.yaml" for p in sweep.iterdir()):
            shutil.rmtree(sweep, ignore_errors=True)
            with contextlib.suppress(OSError):
                sweep.parent.rmdir()  # a date folder made for this sweep only


def _skip_mode_probe() -> None:
    """Hydra composes the whole config once more before a run only to read `hydra.mode`
    (`Hydra.get_mode`, ~0.3 s of every start-up). No file under conf/ sets it, so unless an
    override does, the `-m` flag decides, which is what Hydra does when it finds none."""
    try:
        from hydra._internal.hydra import Hydra
    except ImportError:  # pragma: no cover - a Hydra without the private module
        return
    probe = Hydra.get_mode
    if getattr(probe, "clbench", False):
        return

    def get_mode(self, config_name, overrides):
        if any(o.lstrip("+~").startswith("hydra.mode") for o in overrides):
            return probe(self, config_name, overrides)
        return None

    get_mode.clbench = True
    Hydra.get_mode = get_mode


def _terminate(signum, frame):
    from cl_bench.experiment import RunInterrupted

    raise RunInterrupted(signal.Signals(signum).name)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _run(cfg: DictConfig) -> float:
    from cl_bench.experiment import run_experiment

    signal.signal(signal.SIGTERM, _terminate)
    hydra_cfg = HydraConfig.get()
    try:
        summary = run_experiment(cfg, hydra_cfg.runtime.output_dir)
    except Exception as err:
        # a study's failed cell is recorded in its run folder (summary.json, error.txt) and
        # shown in the table's status; the other cells go on
        if not str(hydra_cfg.sweeper.get("_target_", "")).endswith("StudySweeper"):
            raise
        message = _report(err) or f"{type(err).__name__}: {err}"
        sys.stderr.write(f"clbench-study: run {hydra_cfg.runtime.output_dir} failed: {message}\n")
        return float("nan")
    return summary[f"acc_{summary['scenario']}"]


def _compose_error(err: CompactHydraException) -> str:
    """Hydra's message for a bad override, with a fix that works: Hydra suggests `+key=v`
    for a misspelled key, which adds a key that nothing reads (now an error of its own)."""
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else None
    text = str(err)
    hint = re.search(r"To append to your config use \+(\S+?)=", text)
    if hint:
        key = hint.group(1)
        node, _, leaf = key.rpartition(".")
        kind = getattr(cause, "object_type", None)
        known = ", ".join(f.name for f in dataclasses.fields(kind)
                          if not f.name.startswith("_")) if dataclasses.is_dataclass(kind) else ""
        return (f"{node or 'the config'} has no key {leaf!r}: check the spelling of {key}"
                + (f" (its keys: {known})" if known else "")
                + ", or choose the option that has it (clbench --help lists them)")
    text = text.split("\nConfig search path:")[0].rstrip()
    missing = re.search(r"Could not (?:load|find) '([\w/]+)/([^']+)'", text)
    if missing:  # the options on one line (Hydra lists them one per line, or not at all)
        group = missing.group(1)
        options = sorted(p.stem for p in Path(CONF_DIR, group).glob("*.yaml"))
        text = (f"{text.splitlines()[0]}\nAvailable options in '{group}': "
                f"{', '.join(options)}")
    return text + (f"\n{cause}" if cause else "")


def _report(err: BaseException) -> str | None:
    """The short message `clbench` prints for `err` (a user error, an interrupt, a bad
    override), or None for a bug, which keeps its traceback."""
    run_dir = getattr(err, "clbench_run_dir", None)
    if isinstance(err, KeyboardInterrupt):
        text = getattr(err, "clbench_reason", None) or f"interrupted ({err or 'SIGINT'})"
    elif isinstance(err, CompactHydraException) and not isinstance(err, InstantiationException):
        text = _compose_error(err)
    else:
        found = user_error(err)
        if found is None and isinstance(err, OSError) and err.filename and run_dir is None:
            found = err  # Hydra could not make the run directory
        if found is None:
            if not isinstance(err, InstantiationException):
                return None
            found = err  # Hydra's own message names the target and the cause
        text = describe(found)
        if isinstance(found, OSError) and run_dir is None:
            text += ("\nFix: set output_root (or hydra.run.dir / hydra.sweep.dir) to a folder "
                     "you can write")
    if run_dir is not None:
        text += f"\nrun directory (summary.json, error.txt): {run_dir}"
    return text + "\n(HYDRA_FULL_ERROR=1 shows the traceback)"


def main(entry=None, prog: str = "clbench") -> None:
    """The `clbench` command (or another Hydra entry point `entry`, e.g. clbench-tune's,
    named `prog` in messages). Every error comes back here (Hydra is told to re-raise them)
    and is reported as one short message naming the key or file and the fix: a user error
    (cl_bench.errors), an interrupt, a bad override, under --help too. A bug keeps its
    traceback; HYDRA_FULL_ERROR=1 shows the traceback of everything."""
    _INVOCATION_UID[0] = secrets.token_hex(3)
    _skip_mode_probe()
    full = os.environ.get("HYDRA_FULL_ERROR") == "1"
    previous = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # a log file on a full disk: no "--- Logging error ---" traceback per record
    raise_logging_errors, logging.raiseExceptions = logging.raiseExceptions, False
    try:
        (entry or _run)()
    except (Exception, KeyboardInterrupt) as err:
        message = None if full else _report(err)
        if message is None:
            raise
        sys.stderr.write(f"{prog}: {message}\n")
        signum = getattr(signal, str(err), signal.SIGINT) if isinstance(
            err, KeyboardInterrupt) else None
        sys.exit(1 if signum is None else 128 + signum)  # the shell's code for a signal
    finally:
        logging.raiseExceptions = raise_logging_errors
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():  # the caller's, as before main()
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if previous is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = previous


if __name__ == "__main__":
    main()
