"""The results store of a benchmark: one complete run directory per finished run, nothing else to keep in sync.

Layout of a bench directory ``DIR``::

    DIR/bench.json                 the grid as asked (suite, specs); rewritten atomically
    DIR/runs/<run_id>/             a run directory exactly as ``medvtab train`` writes it; its config.json
                                   holds the run's spec under "bench"
    DIR/failures/<run_id>.json     the last error of a run that failed and has not finished since (advisory)
    DIR/locks/<run_id>.lock        a worker's claim on a run while it trains it (see medvtab.bench.runner)

A run is finished iff ``DIR/runs/<run_id>/metrics.json`` exists: the run's files are written one by one,
atomically, metrics.json last. Until then the directory holds config.json, splits.json and the last epoch's
``checkpoint.pt``; it belongs to the worker holding the run's claim, and a killed run is resumed from its
checkpoint by the next worker that claims it (:mod:`medvtab.bench.runner`). Readers ignore unfinished
directories. ``run_id`` is a readable prefix and a hash of the spec, so the same (task, method, seed, config)
always maps to the same directory.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from medvtab.atomic import write_json
from medvtab.engine import rundir
from medvtab.errors import MedvtabError
from medvtab.methods import make_config

RUNS, GRID_FILE = "runs", "bench.json"


class RunSpec(BaseModel):
    """One cell of a grid: everything that decides a run's result."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    group: str = Field("main", description="which table or figure the run belongs to, e.g. main, patient-ood")
    task: str
    method: str
    seed: int = 0
    general: str = "tiny-general"
    medical: str = "tiny-medical"
    protocol: str = "standard"
    train_fraction: float | None = None
    shots: int | None = None
    seen: int | None = None
    unseen: int | None = None
    train_size: int | None = None
    options: dict = Field(default_factory=dict, description="method options (as --set KEY=VALUE); a grid keeps "
                                                            "only those that differ from the method's defaults")
    train: dict = Field(default_factory=dict, description="TrainConfig overrides: epochs, batch_size, lr, ... "
                                                          "(a grid keeps only those that differ from the defaults)")
    test: bool = Field(True, description="False: a tuning trial, trained and scored on the validation split only "
                                         "(the test split is never read)")
    dedupe: bool = Field(False, description="True: evaluation images identical to a training (or, for the test "
                                            "sets, validation) image are dropped (`medvtab train --dedupe`)")

    def key(self) -> str:
        """Hash of everything but ``group`` (two tables may share one run), with the method's whole configuration
        in place of ``options``: when a default changes, the run is a different run, never the stored one.
        ``test`` counts only when False (a tuning trial) and ``dedupe`` only when True, so a run's id is what it
        was before those fields existed."""
        body = self.model_dump(exclude={"group"} | ({"test"} if self.test else set())
                               | (set() if self.dedupe else {"dedupe"}))
        try:
            body["options"] = make_config(self.method, self.options).model_dump(mode="json")
        except MedvtabError:  # a method (or option) this version does not know: a store may still list it
            pass
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def run_id(self) -> str:
        trial = "" if self.test else "trial-"
        return f"{trial}{self.task}-{self.method}-s{self.seed}-{self.key()}".replace("/", "_")


def run_dir(root: Path, spec: RunSpec) -> Path:
    return Path(root) / RUNS / spec.run_id()


def is_finished(root: Path, spec: RunSpec) -> bool:
    return rundir.is_finished(run_dir(root, spec))


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MedvtabError(f"{path}: unreadable results file ({err})") from None


def write_grid(root: Path, suite: str, specs: list[RunSpec], **info) -> None:
    """Record the grid as asked; a rerun with more specs (a larger grid) rewrites it."""
    write_json(Path(root) / GRID_FILE, {"suite": suite, **info, "specs": [s.model_dump() for s in specs]})


def read_grid(root: Path) -> tuple[dict, list[RunSpec]]:
    """(the grid's info: suite and anything else recorded, its specs)."""
    path = Path(root) / GRID_FILE
    if not path.is_file():
        raise MedvtabError(f"{path}: not found; is this a `medvtab bench --out` directory?")
    grid = _read(path)
    try:
        specs = [RunSpec(**s) for s in grid.pop("specs")]
    except (KeyError, TypeError, ValueError) as err:
        raise MedvtabError(f"{path}: malformed grid ({str(err).splitlines()[0]})") from None
    return grid, specs
