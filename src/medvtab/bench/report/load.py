"""Reading a bench directory for the report: the grid's specs, each with its run's metrics and config where the
run has finished, the failure records, and what else lies in ``runs/``."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from medvtab.bench.runner import read_failures
from medvtab.bench.store import RUNS, RunSpec, read_grid, run_dir
from medvtab.bench.tune import read_tuning
from medvtab.engine import rundir
from medvtab.errors import MedvtabError
from medvtab.methods import make_config


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedvtabError(f"{path}: unreadable results file ({str(err).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise MedvtabError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj


def number(value) -> float:
    """A finite float, else NaN (absent, null, text or infinite values)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


@dataclass
class Run:
    """One spec of the grid and, when its run has finished, its metrics and config."""
    spec: RunSpec
    run_id: str
    dir: Path
    metrics: dict | None
    config: dict | None
    tuned: tuple[str, ...] = ()  # the training and method fields the grid tuned (their values vary by task)

    @property
    def finished(self) -> bool:
        return self.metrics is not None

    def metric(self, key: str, within: str | None = None) -> float:
        m = self.metrics or {}
        if within is not None:
            m = m.get(within) if isinstance(m.get(within), dict) else {}
        return number(m.get(key))

    def method_config(self) -> dict:
        """The method's effective options: the run's recorded config, else the spec's options over the
        method's defaults."""
        if self.config and isinstance(self.config.get("method_config"), dict):
            return self.config["method_config"]
        try:
            return make_config(self.spec.method, dict(self.spec.options)).model_dump()
        except MedvtabError:
            return dict(self.spec.options)


@dataclass
class Bench:
    root: Path
    info: dict
    runs: list[Run]
    extra_runs: list[str]  # finished run directories not in the grid
    staged: list[str]  # staged (in progress or interrupted) run directories
    failures: dict[str, dict] = field(default_factory=dict)  # run_id -> DIR/failures/<run_id>.json record
    tuning: dict | None = None  # DIR/tuning.json (medvtab.bench.tune), None for an untuned grid

    def group(self, name: str) -> list[Run]:
        return [r for r in self.runs if r.spec.group == name]

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.finished]


def load_bench(root: Path) -> Bench:
    """Read a bench directory; a missing directory, no grid or a corrupt JSON file is a MedvtabError."""
    root = Path(root)
    if not root.exists():
        raise MedvtabError(f"{root}: no such directory")
    if not root.is_dir():
        raise MedvtabError(f"{root}: not a directory; expected a `medvtab bench --out` directory")
    try:
        info, specs = read_grid(root)
        tuned = tuple((info.get("tune") or {}).get("space") or ())
    except AttributeError:
        raise MedvtabError(f"{root / 'bench.json'}: malformed grid (not a JSON object)") from None
    runs, ids = [], set()
    for spec in specs:
        d = run_dir(root, spec)
        config = None
        metrics = rundir.read_result(d)  # read once: it also decides whether the run has finished
        if metrics is not None:
            config = _read_json(d / rundir.CONFIG)
        runs.append(Run(spec, spec.run_id(), d, metrics, config, tuned))
        ids.add(spec.run_id())
    failures = read_failures(root)
    for run in runs:  # not a result: listed as failed, the rest rendered
        if not run.finished and rundir.unreadable_result(run.dir):
            failures[run.run_id] = {"run_id": run.run_id, "error": f"{run.dir / rundir.METRICS}: unreadable (not a "
                                    f"JSON object); rerun `medvtab bench` to redo the run", "type": "UnreadableResult"}
    tuning = read_tuning(root)
    trials = {t.get("run_id") for s in (tuning or {}).get("studies", []) for t in s.get("trials", [])}
    extra, staged = [], []
    runs_dir = root / RUNS
    if runs_dir.is_dir():
        for d in sorted(runs_dir.iterdir()):
            if d.name.startswith("."):
                staged.append(d.name)
            elif d.is_dir() and d.name not in ids | trials and rundir.is_finished(d):
                extra.append(d.name)
    return Bench(root, info, runs, extra, staged, {k: v for k, v in failures.items() if k in ids}, tuning)
