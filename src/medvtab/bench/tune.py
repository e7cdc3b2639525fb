"""Tuning every (task, method) of a grid on the validation split, with Optuna, before its final runs.

A grid's ``tune`` section (:class:`medvtab.bench.grid.TuneConfig`) names a search space (a grid of values of
TrainConfig fields or method options). Specs share a *tuning key*: (task, method, the group's fixed method
options, backbones), not the seed, the protocol or a sweep's point. One Optuna study per key runs its trials on
the first spec of the key in grid order, at the tuning seed, with ``test=False``: a trial is a run in
``DIR/runs/`` like any other (``trial-...``), trained and scored on the validation split only; the test split is
never read. Every spec of the key then gets the chosen values (:func:`resolve`), so its run_id includes them.

Trials run one after another in grid order of the space's values (the same order for every method, so the
median pruner treats every method alike): each point is enqueued, so no sampler chooses (Optuna's GridSampler
would draw the order at random and count a failed point as visited, never running it again). Each reports its
validation score per epoch and is stopped early when the pruner says so. Studies live in an Optuna RDB storage (``DIR/tuning.db``, SQLite, unless a URL is given):
finished trials are reused, a trial a killed worker left RUNNING is marked FAIL and its point run again, and a
trial whose run directory already finished is not retrained (its recorded scores are replayed). The outcome of
every study (trials, scores, chosen values, budget) is written to ``DIR/tuning.json`` (see docs/benchmark.md).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from medvtab.atomic import make_output_dir, write_json
from medvtab.bench.executors import map_jobs
from medvtab.bench.grid import GridConfig, TuneConfig, swept_options, train_overrides
from medvtab.bench.runner import run_one
from medvtab.bench.store import RunSpec, run_dir
from medvtab.engine import rundir
from medvtab.engine.batches import BatchSizes
from medvtab.engine.loop import TrainConfig
from medvtab.errors import MedvtabError
from medvtab.methods import make_config

TUNING_FILE, TUNING_DB = "tuning.json", "tuning.db"
TRIAL_GROUP = "tuning"


@dataclass(frozen=True)
class Tuning:
    """What a bench run tunes: the grid's ``tune`` section, each group's swept options and the study storage
    (None: ``sqlite:///DIR/tuning.db``)."""
    config: TuneConfig
    sweeps: dict[str, tuple[str, ...]]
    storage: str | None = None

    def storage_url(self, root: Path) -> str:
        return self.storage or f"sqlite:///{Path(root).resolve() / TUNING_DB}"


def tuning_of(grids: list[GridConfig], storage: str | None = None) -> Tuning | None:
    """The tuning of one or more grids run into one store (their ``tune`` sections must agree), or None."""
    configs = {g.tune.model_dump_json() for g in grids if g.tune is not None}
    if not configs:
        return None
    if len(configs) > 1 or any(g.tune is None for g in grids):
        raise MedvtabError("option '--suite': the suites' 'tune' sections differ; run them into separate stores")
    sweeps = {group: keys for g in grids for group, keys in swept_options(g).items()}
    return Tuning(next(g.tune for g in grids if g.tune is not None), sweeps, storage)


@dataclass(frozen=True)
class StudySpec:
    """One study: its trials are ``base`` with each point of ``space`` (``fixed``: the key's method options)."""
    name: str
    storage: str
    base: RunSpec
    fixed: dict
    space: dict[str, list]
    pruner: str

    def points(self) -> list[dict]:
        """The space's points in grid order (the order trials run and ties are broken in)."""
        keys = list(self.space)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.space[k] for k in keys))]

    def trial(self, values: dict) -> RunSpec:
        return with_values(self.base, values)


@dataclass
class StudyResult:
    name: str
    trials: list[dict] = field(default_factory=list)
    chosen: dict | None = None
    best_val_score: float | None = None
    budget: dict = field(default_factory=dict)


def tuning_key(spec: RunSpec, sweeps: dict[str, tuple[str, ...]]) -> str:
    swept = sweeps.get(spec.group, ())
    fixed = {k: v for k, v in spec.options.items() if k not in swept}
    return json.dumps([spec.task, spec.method, fixed, spec.general, spec.medical] + ["dedupe"] * spec.dedupe,
                      sort_keys=True)


def with_values(spec: RunSpec, values: dict, swept: tuple[str, ...] = ()) -> RunSpec:
    """``spec`` with ``values`` in its ``train`` (TrainConfig fields) or ``options`` (method options; a swept
    option keeps the sweep's value), normalised as the grid normalises them."""
    train = {k: v for k, v in values.items() if k in TrainConfig.model_fields}
    options = {k: v for k, v in values.items() if k not in train and k not in swept}
    where = f"tuning {spec.task} {spec.method}"
    return spec.model_copy(update={
        "train": train_overrides({**spec.train, **train}, where),
        "options": make_config(spec.method, {**spec.options, **options}).model_dump(exclude_defaults=True)})


def plan_studies(root: Path, specs: list[RunSpec], tuning: Tuning) -> dict[str, StudySpec]:
    """tuning key -> its study, on the key's first spec in grid order."""
    cfg, storage = tuning.config, tuning.storage_url(root)
    studies: dict[str, StudySpec] = {}
    for spec in specs:
        key = tuning_key(spec, tuning.sweeps)
        if key in studies:
            continue
        option_names = type(make_config(spec.method, {})).model_fields
        space = {k: v for k, v in cfg.space.items() if k in TrainConfig.model_fields or k in option_names}
        swept = tuning.sweeps.get(spec.group, ())
        fixed = {k: v for k, v in spec.options.items() if k not in swept}
        base = spec.model_copy(update={"group": TRIAL_GROUP, "seed": cfg.seed, "test": False, "options": fixed})
        body = json.dumps({"base": base.key(), "space": space, "pruner": cfg.pruner}, sort_keys=True)
        label = Path(spec.task).stem if "/" in spec.task else spec.task
        name = f"{label}-{spec.method}-{hashlib.sha256(body.encode()).hexdigest()[:12]}"
        studies[key] = StudySpec(name, storage, base, fixed, space, cfg.pruner)
    return studies


def _storage(url: str):
    import optuna  # imported here: only a tuned bench needs it

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if url.startswith("sqlite"):  # studies in parallel processes wait for the file's lock instead of failing
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    return optuna.storages.RDBStorage(url)


def _create_studies(studies: list[StudySpec]) -> None:
    """Create the storage's tables and every study here, once: parallel workers creating a fresh SQLite storage
    at the same time collide."""
    import optuna

    storages = {url: _storage(url) for url in dict.fromkeys(s.storage for s in studies)}
    for study in studies:
        optuna.create_study(study_name=study.name, storage=storages[study.storage], direction="maximize",
                            load_if_exists=True)


def _point(values: dict, space: dict) -> tuple:
    return tuple(values.get(k) for k in space)


def _finished_metrics(root: Path, spec: RunSpec) -> dict | None:
    return rundir.read_result(run_dir(root, spec))


def run_study(root: str | Path, study: StudySpec, device: str = "cpu",
              data_root: str | Path | None = None) -> StudyResult:
    """Run (or resume) one study's trials, one after another, and choose its values (a job of
    :func:`medvtab.bench.executors.map_jobs`, which sets torch's threads)."""
    import optuna
    from optuna.trial import TrialState

    root = Path(root)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if study.pruner == "median"
              else optuna.pruners.NopPruner())
    storage = _storage(study.storage)
    opt = optuna.create_study(study_name=study.name, storage=storage, direction="maximize", pruner=pruner,
                              load_if_exists=True)
    distributions = {k: optuna.distributions.CategoricalDistribution(v) for k, v in study.space.items()}
    done, waiting = set(), set()
    for t in opt.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            done.add(_point(t.params, study.space))
        elif t.state == TrialState.RUNNING:  # its worker was killed: the point runs again
            opt.tell(t.number, state=TrialState.FAIL)
        elif t.state == TrialState.WAITING:
            waiting.add(_point(t.system_attrs.get("fixed_params", {}), study.space))
    for values in study.points():
        if _point(values, study.space) not in done | waiting:
            opt.enqueue_trial(values)
    while any(t.state == TrialState.WAITING for t in opt.get_trials(deepcopy=False)):
        trial = opt.ask(distributions)
        values = dict(trial.params)
        if _point(values, study.space) in done:  # a duplicate left queued by an interrupted run
            opt.tell(trial, state=TrialState.FAIL)
            continue
        spec = study.trial(values)
        trial.set_user_attr("run_id", spec.run_id())

        def on_epoch(row: dict, trial=trial) -> bool:
            trial.report(row.get("val_auroc", row.get("val_accuracy")), row["epoch"])
            return trial.should_prune()

        outcome = run_one(root, spec, device, data_root, on_epoch=on_epoch)
        metrics = outcome.metrics if outcome.status == "finished" else _finished_metrics(root, spec)
        if metrics is None:  # failed, or claimed by another live worker
            opt.tell(trial, state=TrialState.FAIL)
            continue
        if outcome.status != "finished":  # finished before (the study's record was lost): replay its scores
            for epoch, score in enumerate(metrics["val_scores"], 1):
                trial.report(score, epoch)
        if metrics.get("pruned_at_epoch") is not None:
            opt.tell(trial, state=TrialState.PRUNED)
        else:
            opt.tell(trial, metrics["val_score"])
        done.add(_point(values, study.space))
    return _result(root, study, opt.get_trials(deepcopy=False))


def _result(root: Path, study: StudySpec, trials) -> StudyResult:
    """The study's record: every trial that ran (scores from its run directory) and the chosen values: the best
    completed trial's validation score; ties (common while methods sit at the majority-class rate) go to the lower
    validation loss of its best epoch, then to the earlier point in grid order."""
    from optuna.trial import TrialState

    result = StudyResult(study.name)
    best: dict[tuple, dict] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) or not t.params:
            continue
        spec = study.trial(dict(t.params))
        metrics = _finished_metrics(root, spec) if t.state != TrialState.FAIL else None
        record = {"number": t.number, "values": dict(t.params), "state": t.state.name, "run_id": spec.run_id(),
                  "val_scores": (metrics or {}).get("val_scores"), "val_score": (metrics or {}).get("val_score"),
                  "val_loss": (metrics or {}).get("val_loss"),
                  "pruned_at_epoch": (metrics or {}).get("pruned_at_epoch")}
        result.trials.append(record)
        if t.state == TrialState.COMPLETE and metrics is not None:
            best[_point(t.params, study.space)] = record
        if metrics is not None and not result.budget:
            result.budget = _budget(study, spec, metrics)
    winner = choose([best.get(_point(values, study.space)) for values in study.points()])
    if winner is not None:
        result.chosen, result.best_val_score = dict(winner["values"]), winner["val_score"]
    return result


def choose(records: list[dict | None]) -> dict | None:
    """The best of the completed trials' records, given in grid order (None: no completed trial there): the highest
    validation score; a tie goes to the lower validation loss at its best epoch, then to the earlier point."""
    def rank(record: dict) -> tuple:
        loss = record.get("val_loss")
        return record["val_score"], -(loss if loss is not None and math.isfinite(loss) else math.inf)

    best = None
    for record in records:
        if record is not None and (best is None or rank(record) > rank(best)):
            best = record
    return best


def _budget(study: StudySpec, spec: RunSpec, metrics: dict) -> dict:
    """What each trial may spend: epochs x optimiser steps per epoch on the train images (at most; a pruned or
    early-stopped trial spends less)."""
    cfg = TrainConfig(**spec.train)
    images = (metrics.get("split_sizes") or {}).get("train")
    steps = BatchSizes(cfg.batch_size, cfg.eval_batch_size).steps_per_epoch(images, 1) if images else None
    return {"trials": len(study.points()), "epochs": cfg.epochs, "steps_per_epoch": steps, "train_images": images,
            "batch_size": cfg.batch_size}


def resolve(specs: list[RunSpec], tuning: Tuning, studies: dict[str, StudySpec],
            chosen: dict[str, dict]) -> list[RunSpec]:
    """Every spec with its key's chosen values (study name -> values); keys without a choice keep the defaults."""
    out = []
    for spec in specs:
        study = studies.get(tuning_key(spec, tuning.sweeps))
        values = chosen.get(study.name) if study is not None else None
        out.append(with_values(spec, values, tuning.sweeps.get(spec.group, ())) if values else spec)
    return out


def read_tuning(root: Path) -> dict | None:
    """``DIR/tuning.json``, or None for an untuned store."""
    path = Path(root) / TUNING_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MedvtabError(f"{path}: unreadable tuning record ({err})") from None


def tune_grid(root: Path, specs: list[RunSpec], tuning: Tuning, *, device: str = "cpu", data_root=None,
              executor: str = "serial", workers: int | None = None, threads: int = 1, address: str | None = None,
              console=None) -> list[RunSpec]:
    """Run every study of the grid through the executor (studies in parallel, each study's trials in order),
    write ``DIR/tuning.json`` and return the specs with the chosen values. A study that raised stops the grid
    before its final runs (a MedvtabError; rerunning resumes it); a study none of whose trials completed leaves
    its key at the defaults."""
    root = Path(root)
    make_output_dir(root)
    studies = plan_studies(root, specs, tuning)
    say = console.print if console is not None else (lambda *a, **k: None)
    say(f"tune: {len(studies)} studies of {len(next(iter(studies.values())).points()) if studies else 0} trials "
        f"on validation -> {tuning.storage_url(root)}", markup=False)
    _create_studies(list(studies.values()))
    results: dict[str, StudyResult] = {}
    failed: list[str] = []
    data_root = None if data_root is None else str(data_root)
    jobs = [(str(root), study, device, data_root) for study in studies.values()]
    for (_, study, *_), result in map_jobs(run_study, jobs, executor=executor, workers=workers, threads=threads,
                                           address=address, gpu=device.startswith("cuda")):
        if isinstance(result, BaseException):
            failed.append(f"{describe_study(study)} [{study.name}]: {str(result).strip().splitlines()[0]}")
            say(f"tune: {failed[-1]}: FAILED", markup=False)
            continue
        results[study.name] = result
        say(f"tune: {describe_study(study)}: {describe_result(result)}", markup=False)
    write_json(root / TUNING_FILE, tuning_record(tuning, root, studies, results))
    if failed:
        raise MedvtabError(f"tuning: {len(failed)} of {len(studies)} studies failed, the first {failed[0]}; no "
                           f"final run started; rerun the same command to resume (finished trials are kept)")
    return resolve(specs, tuning, studies, {n: r.chosen for n, r in results.items() if r.chosen})


def describe_study(study: StudySpec) -> str:
    task = study.base.task if len(study.base.task) <= 32 else Path(study.base.task).name
    fixed = "".join(f" {k}={v}" for k, v in study.fixed.items())
    return f"{task} {study.base.method}{fixed}"


def describe_result(result: StudyResult) -> str:
    states = [t["state"] for t in result.trials]
    counts = ", ".join(f"{states.count(s)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL") if s in states)
    if result.chosen is None:
        return f"no completed trial ({counts or 'none ran'}); defaults kept"
    chosen = ", ".join(f"{k}={v}" for k, v in result.chosen.items())
    return f"{chosen} (validation {result.best_val_score:.3f}; {counts})"


def tuning_record(tuning: Tuning, root: Path, studies: dict[str, StudySpec], results: dict[str, StudyResult]) -> dict:
    out = []
    for study in studies.values():
        r = results.get(study.name) or StudyResult(study.name)
        b = study.base
        out.append({"study": study.name, "task": b.task, "method": b.method, "options": study.fixed,
                    "general": b.general, "medical": b.medical, "space": study.space, "pruner": study.pruner,
                    "trial_spec": b.model_dump(), "budget": r.budget, "trials": r.trials, "chosen": r.chosen,
                    "best_val_score": r.best_val_score})
    return {"storage": tuning.storage_url(root), "tune": tuning.config.model_dump(), "studies": out}


def budget_sentence(budget: dict) -> str:
    """The budget in words, e.g. '4 trials of 3 epochs x 8 steps on 256 train images'."""
    if not budget:
        return "no trial finished"
    return (f"{budget['trials']} trials of {budget['epochs']} epochs x {budget.get('steps_per_epoch') or '?'} steps "
            f"on {budget.get('train_images') or '?'} train images")


def print_tuning_plan(root: Path, specs: list[RunSpec], tuning: Tuning, console=None) -> list[RunSpec]:
    """``--dry-run``: each study, its trials and how many have finished runs, its chosen values where
    ``DIR/tuning.json`` knows them; returns the specs with the values known so far. Nothing is written."""
    from rich.console import Console

    console = console or Console(highlight=False, soft_wrap=True)
    studies = plan_studies(root, specs, tuning)
    recorded = {s["study"]: s.get("chosen") for s in (read_tuning(root) or {}).get("studies", [])}
    console.print(f"tuning: {len(studies)} studies -> {tuning.storage_url(root)}", markup=False)
    for study in studies.values():
        points = study.points()
        finished = sum(_finished_metrics(Path(root), study.trial(v)) is not None for v in points)
        chosen = recorded.get(study.name)
        known = ", ".join(f"{k}={v}" for k, v in chosen.items()) if chosen else "to be chosen"
        console.print(f"  {describe_study(study)}: {len(points)} trials, {finished} finished; {known}  "
                      f"[{study.name}]", markup=False)
    return resolve(specs, tuning, studies, {n: c for n, c in recorded.items() if c})
