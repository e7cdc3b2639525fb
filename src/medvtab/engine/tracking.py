"""Optional experiment tracking: TensorBoard event files in the run directory, and MLflow runs.

Both are extras (``pip install medvtab[tracking]``) and imported only when asked for. Every epoch's row of the
training log is logged as it happens (step = epoch); at the end, the test metrics, the run's parameters (method,
task, protocol, seed, backbones, training config, method options) and, for MLflow, the run directory's files
as artifacts.
"""
from __future__ import annotations

import math
from pathlib import Path

from medvtab.errors import MedvtabError
from medvtab.extras import require

FINAL_KEYS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "mean_ap", "exact_match", "majority_rate",
              "trainable_params", "params_ratio", "eval_images_per_second", "train_seconds")


def _flat(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return out


def _numbers(row: dict) -> dict:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


class Tracker:
    """Forwards epochs and the final result to the trackers asked for; a no-op without any."""

    def __init__(self, tensorboard_dir: Path | None = None, mlflow_uri: str | None = None,
                 experiment: str = "medvtab", run_name: str | None = None):
        self.tb = self.mlflow = None
        if tensorboard_dir is not None:
            self.tb = require("torch.utils.tensorboard", extra="tracking", feature="option '--tensorboard'",
                              package="tensorboard").SummaryWriter(log_dir=str(tensorboard_dir))
        if mlflow_uri is not None:
            self.mlflow = require("mlflow", extra="tracking", feature="option '--mlflow'", package="mlflow-skinny")
            try:
                self.mlflow.set_tracking_uri(mlflow_uri)
                self.mlflow.set_experiment(experiment)
                self.mlflow.start_run(run_name=run_name)
            except Exception as err:  # noqa: BLE001 - mlflow raises many types for a bad URI or server
                raise MedvtabError(f"option '--mlflow': cannot start a run at '{mlflow_uri}' "
                                   f"({str(err).splitlines()[0][:160]})") from None

    def epoch(self, row: dict) -> None:
        step = int(row["epoch"])
        numbers = {k: v for k, v in _numbers(row).items() if k != "epoch"}
        if self.tb is not None:
            for k, v in numbers.items():
                self.tb.add_scalar(f"train/{k}", v, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics(numbers, step=step)

    def finish(self, params: dict, metrics: dict, run_dir: Path | None) -> None:
        final = _numbers({k: metrics[k] for k in FINAL_KEYS if k in metrics})
        for name in ("seen", "unseen"):
            if isinstance(metrics.get(name), dict):
                final.update({f"{name}_{k}": v for k, v in _numbers(metrics[name]).items()})
        if self.tb is not None:
            self.tb.add_hparams(_flat("", params, {}), {f"test/{k}": v for k, v in final.items()})
            self.tb.close()
        if self.mlflow is not None:
            flat = _flat("", params, {})
            self.mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
            self.mlflow.log_metrics({f"test_{k}": v for k, v in final.items()})
            if run_dir is not None:
                self.mlflow.log_artifacts(str(run_dir))
            self.mlflow.end_run()

    def abort(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run(status="FAILED")
