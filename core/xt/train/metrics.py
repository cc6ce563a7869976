"""Metrics: ``RUN/metrics.jsonl``, the experiment trackers of ``report_to`` (TensorBoard, Weights & Biases,
MLflow) and the loss-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xt.errors import XtError

TRACKERS = {"tensorboard": None, "wandb": "wandb", "mlflow": "mlflow"}  # name -> the xt-core extra it needs
TRACKER_IDS = "trackers.json"  # wandb / mlflow run ids, so that --resume continues the same tracker runs


def check_trackers(names: list[str]) -> None:
    """Refuse unknown tracker names and trackers whose package is missing (without importing it)."""
    import importlib.util

    for name in names:
        if name not in TRACKERS:
            raise XtError(f"report_to names unknown tracker '{name}'; choose from {', '.join(TRACKERS)}.")
        extra = TRACKERS[name]
        if extra and importlib.util.find_spec(extra) is None:
            raise XtError(f"report_to includes '{name}' but the {name} package is not installed; "
                          f"pip install 'xt-core[{extra}]'.")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics record except ``step`` (what every tracker receives)."""
    return {key: float(value) for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


class TensorBoardTracker:
    def __init__(self, run_dir: Path, config: dict[str, Any], resume_step: int | None, run_ids: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"),
                                    purge_step=resume_step + 1 if resume_step is not None else None)
        if config:
            import yaml

            self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key.replace("_", "/", 1) if key.startswith(("train_", "eval_")) else key,
                                   value, step)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        lines = [json.dumps(row, ensure_ascii=False) for row in rows]
        self.writer.add_text("eval/samples", "\n\n".join(lines), step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbTracker:
    """Weights & Biases; ``WANDB_MODE=offline`` writes a local run folder under ``RUN/wandb``."""

    def __init__(self, run_dir: Path, config: dict[str, Any], resume_step: int | None, run_ids: dict) -> None:
        import os

        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "xt"), name=run_dir.name, dir=str(run_dir),
                              config=config, id=run_ids.get("wandb"), resume="allow" if resume_step else None,
                              reinit="create_new")
        run_ids["wandb"] = self.run.id

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        table = self.wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
        self.run.log({"eval_samples": table}, step=step)

    def close(self) -> None:
        self.run.finish()
        self.wandb.teardown()  # ends the W&B service; only then is an offline run's .wandb file complete


class MlflowTracker:
    """MLflow; ``MLFLOW_TRACKING_URI`` when set, else a file store in ``RUN/mlruns``."""

    def __init__(self, run_dir: Path, config: dict[str, Any], resume_step: int | None, run_ids: dict) -> None:
        import os

        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a local file store in the run; MLflow 3 asks for an explicit opt-in to file stores
            uri = (run_dir / "mlruns").absolute().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        run_id = run_ids.get("mlflow")
        if not run_id:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "xt")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            for key, value in flatten(config).items():
                self.client.log_param(run_id, key, str(value)[:6000])
            self.client.log_dict(run_id, config, "config.json")
        self.run_id = run_ids["mlflow"] = run_id

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()])

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        self.client.log_dict(self.run_id, rows, f"eval/step-{step}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKER_CLASSES = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"a.b": value}`` (MLflow parameters are flat)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _step_of(line: str) -> int | None:
    """The step of one metrics.jsonl line; None for a blank or partial line (a kill mid-write)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return int(record.get("step", 0)) if isinstance(record, dict) else None


class MetricsLog:
    """Append-only JSONL plus the trackers of ``report_to`` (rank 0 only; other ranks get a no-op).

    Every tracker receives the same numeric values per step as ``metrics.jsonl``, the resolved config
    once, and the eval samples of each evaluation.
    """

    def __init__(self, run_dir: Path, *, enabled: bool, resume_step: int | None = None,
                 report_to: tuple[str, ...] | list[str] = ("tensorboard",), config: dict[str, Any] | None = None) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.trackers: list[Any] = []
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # records logged after the checkpoint by the interrupted run are replaced by the resumed ones
            kept = [line for line in self.path.read_text().splitlines()
                    if _step_of(line) is not None and _step_of(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        ids_path = run_dir / TRACKER_IDS
        run_ids = json.loads(ids_path.read_text()) if resume_step is not None and ids_path.is_file() else {}
        for name in report_to:
            tracker = self._open(name, run_dir, config or {}, resume_step, run_ids)
            if tracker is not None:
                self.trackers.append(tracker)
        if run_ids:
            ids_path.write_text(json.dumps(run_ids))

    @staticmethod
    def _open(name: str, run_dir: Path, config: dict[str, Any], resume_step: int | None, run_ids: dict) -> Any:
        check_trackers([name])
        try:
            return TRACKER_CLASSES[name](run_dir, config, resume_step, run_ids)
        except ImportError as exc:
            if name == "tensorboard":
                return None  # a core dependency; if it is broken, metrics.jsonl still has everything
            raise XtError(f"report_to includes '{name}' but it failed to import ({exc}); "
                          f"pip install 'xt-core[{TRACKERS[name] or name}]'.") from exc
        except XtError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. an unreachable tracking server
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise XtError(f"Tracker '{name}' could not start ({type(exc).__name__}: {first}); check its settings "
                          f"(e.g. WANDB_MODE, MLFLOW_TRACKING_URI) or drop it from report_to.") from exc

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        values, step = scalars(record), int(record.get("step", 0))
        for tracker in self.trackers:
            tracker.log_metrics(values, step)

    def log_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        """Eval samples (prompt, reference, prediction, correct) to every tracker; the JSONL copy is RUN/eval/."""
        if self.enabled and rows:
            for tracker in self.trackers:
                tracker.log_samples(rows, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(metrics_path: Path, out_png: Path) -> Path | None:
    """Training (and validation) loss against step, as a PNG; None when there is nothing to plot."""
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
