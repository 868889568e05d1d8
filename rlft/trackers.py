"""Experiment trackers: the run's metrics, sample tables and resolved config sent to TensorBoard, Weights & Biases
and/or MLflow (config key ``log.report_to``), beside rlft's own files (metrics.jsonl, samples.jsonl).

``open_trackers(names, out, run_name, config)`` opens the named trackers; the returned ``Trackers`` fans each call
out to all of them. Every library is imported only when named (extra: ``pip install 'rlft[tracking]'``), and each
one writes offline by default, under the run folder:

- ``tensorboard``: event files in ``OUT/tensorboard/`` (``torch.utils.tensorboard``: no package beyond
  ``tensorboard``); the config as hyper-parameters (the HParams tab) and as text; samples as a Markdown table.
- ``wandb``: ``WANDB_MODE`` (default ``offline``), ``WANDB_DIR`` (default ``OUT``), ``WANDB_PROJECT`` (default
  ``rlft``); the config as the run's config; samples as a ``wandb.Table``.
- ``mlflow``: ``MLFLOW_TRACKING_URI`` (default a SQLite store ``OUT/mlruns/mlflow.db`` with artifacts in
  ``OUT/mlruns/artifacts``), ``MLFLOW_EXPERIMENT_NAME`` (default ``rlft``); the config as params; samples as a
  table artifact (``samples/step_000010.json``, ``MlflowClient.log_table``).

Only rank 0 of a torchrun job opens trackers (the caller's job). Values that are not finite numbers (None, NaN,
strings) are not logged as metrics.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from pathlib import Path

from .errors import ConfigError

NAMES = ("tensorboard", "wandb", "mlflow")
INSTALL = "pip install 'rlft[tracking]'"


def flatten(config: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists and other non-scalars become JSON text (trackers take scalars)."""
    flat: dict = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            flat.update(flatten(v, key + "."))
        elif v is None or isinstance(v, (str, int, float, bool)):
            flat[key] = v
        else:
            flat[key] = json.dumps(v, default=str)
    return flat


def numeric(metrics: dict) -> dict:
    """The finite numbers among ``metrics`` (None, NaN, inf, strings and lists dropped)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


def table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """(columns, data) of a samples table: the keys whose values are scalars (per-token lists such as ``tokens``
    and ``advantages`` are left out: a table cell holds one value), in first-seen order."""
    columns: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in columns and (v is None or isinstance(v, (str, int, float, bool))):
                columns.append(k)
    return columns, [[r.get(c) for c in columns] for r in rows]


def _missing(name: str, package: str, error: ImportError | None = None) -> ConfigError:
    why = f"cannot be imported ({error})" if error else "is not installed"
    return ConfigError(f"log.report_to names {name}, but the '{package}' package {why}: {INSTALL} "
                       f"(or remove {name} from log.report_to)")


class TensorBoardTracker:
    """Event files under OUT/tensorboard/."""

    def __init__(self, out: Path, run_name: str, params: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams
        except ImportError as e:  # torch raises ImportError naming TensorBoard when the package is absent
            raise _missing("tensorboard", "tensorboard", e) from e
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))
        # hparams accepts int, float, str, bool (and tensors): None becomes text
        hp = {k: ("None" if v is None else v) for k, v in params.items()}
        for summary in hparams(hp, {}):  # what add_hparams writes, but into this writer's own folder
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in params.items()), 0)

    def log(self, step: int, metrics: dict) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def samples(self, step: int, columns: list[str], data: list[list]) -> None:
        def cell(v) -> str:  # one Markdown table cell: no line breaks, no column separators
            return str(v).replace("\\", "\\\\").replace("|", "\\|").replace("\n", "\\n")

        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in data]
        self.writer.add_text("samples", "\n".join(lines), step)

    def finish(self) -> None:
        self.writer.close()


class WandbTracker:
    """A W&B run, offline unless WANDB_MODE says otherwise."""

    def __init__(self, out: Path, run_name: str, params: dict):
        try:
            import wandb
        except ImportError as e:
            raise _missing("wandb", "wandb", e) from e
        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "rlft", name=run_name,
                              dir=os.environ.get("WANDB_DIR") or str(out), config=params,
                              mode=os.environ.get("WANDB_MODE") or "offline",
                              settings=wandb.Settings(console="off", quiet=True))  # rlft prints its own lines

    def log(self, step: int, metrics: dict) -> None:
        self.run.log(metrics, step=step)

    def samples(self, step: int, columns: list[str], data: list[list]) -> None:
        self.run.log({"samples": self.wandb.Table(columns=columns, data=data)}, step=step)

    def finish(self) -> None:
        self.run.finish()
        if self.wandb.run is None:  # no other run in this process: stop W&B's service, which writes the rest
            self.wandb.teardown()  # of the offline .wandb file only then (finish returns before that)


_MLFLOW_KEY = re.compile(r"[^\w\-. /]")  # MLflow names allow letters, digits, _ - . space and /


class MlflowTracker:
    """An MLflow run in MLFLOW_TRACKING_URI, else in a SQLite store under OUT/mlruns/."""

    def __init__(self, out: Path, run_name: str, params: dict):
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise _missing("mlflow", "mlflow", e) from e
        uri, artifacts = os.environ.get("MLFLOW_TRACKING_URI"), None
        if not uri:
            store = out / "mlruns"
            store.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{store.resolve() / 'mlflow.db'}", (store / "artifacts").resolve().as_uri()
        self.client = MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "rlft"
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(name, artifact_location=artifacts)
        self.run_id = self.client.create_run(exp_id, run_name=run_name, tags={"rlft.out": str(out)}).info.run_id
        items = [Param(_MLFLOW_KEY.sub("_", k), str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log(self, step: int, metrics: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(_MLFLOW_KEY.sub("_", k), v, now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def samples(self, step: int, columns: list[str], data: list[list]) -> None:
        cols = {c: [row[j] for row in data] for j, c in enumerate(columns)}
        self.client.log_table(self.run_id, data=cols, artifact_file=f"samples/step_{step:06d}.json")

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


class Trackers:
    """The open trackers; each call goes to all of them. Also a context manager (``finish`` on exit)."""

    def __init__(self, trackers: list):
        self.trackers = trackers

    def log(self, step: int, metrics: dict) -> None:
        """Every finite numeric metric at ``step`` (others skipped)."""
        values = numeric(metrics)
        if values:
            for t in self.trackers:
                t.log(step, values)

    def samples(self, step: int, rows: list[dict]) -> None:
        """A table of samples at ``step`` (one row per dict; scalar columns only)."""
        columns, data = table(rows)
        if data:
            for t in self.trackers:
                t.samples(step, columns, data)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()
        self.trackers = []

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc) -> None:
        self.finish()


def open_trackers(names: list[str], out: Path, run_name: str, config: dict) -> Trackers:
    """Open the named trackers (among tensorboard, wandb, mlflow) for the run in ``out``. ``config`` is the
    resolved config as a nested dict: it is logged flattened (``algo.kl_coef``), with ``run.name`` and
    ``run.folder``. An unknown name or a missing library raises ConfigError before any tracker opens."""
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ConfigError(f"log.report_to: unknown tracker {unknown[0]!r}; choose among {', '.join(NAMES)} "
                          f"(e.g. log.report_to=[tensorboard])")
    for name in names:
        if importlib.util.find_spec(name) is None:  # checked first: no tracker opens when one cannot
            raise _missing(name, name)
    out = Path(out)
    params = {**flatten(config), "run.name": run_name, "run.folder": str(out)}
    opened: list = []
    try:
        for name in dict.fromkeys(names):  # each once, in the order given
            opened.append(TRACKERS[name](out, run_name, params))
    except BaseException:
        Trackers(opened).finish()  # a later tracker failed: close the ones already open
        raise
    return Trackers(opened)
