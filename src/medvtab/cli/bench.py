"""``medvtab bench`` and ``medvtab report``: a grid of runs into a resumable results store, and its tables and
figures."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from medvtab.errors import MedvtabError


def bench(
    out: Path = typer.Option(..., help="The results store: DIR/bench.json (the grid) and DIR/runs/<run_id>/ (one "
                                       "run directory per finished run). Rerun with the same DIR to resume."),
    suite: Optional[str] = typer.Option(None, help="A built-in grid: mini (every method on retinamnist, "
                                                   "pneumoniamnist, breastmnist, plus patient-OOD and few-shot "
                                                   "groups), mini-ablations (DynaMer's ablation grids) or "
                                                   "mini-scaling (accuracy against Total Params per modality); "
                                                   "mini,mini-ablations runs both into one store."),
    config: Optional[Path] = typer.Option(None, help="A YAML grid file (see configs/*.yaml) instead of --suite."),
    methods: Optional[str] = typer.Option(None, help="Only these methods, comma-separated."),
    seeds: Optional[int] = typer.Option(None, min=1, help="Seeds 0..N-1 for every group (default: the grid's; "
                                                          "the mini suites use 1)."),
    quick: bool = typer.Option(False, "--quick", help="The built-in suite's quick profile (a few minutes on a "
                                                      "2-core CPU)."),
    executor: str = typer.Option("local", help="local (a pool of worker processes on this machine), serial (in this "
                                               "process) or ray (one Ray task per run, locally or on a cluster)."),
    address: Optional[str] = typer.Option(None, help="ray: the cluster to connect to (default: a private local "
                                                     "Ray instance)."),
    workers: Optional[int] = typer.Option(None, min=1, help="local, ray: runs in flight at once (default: the CPUs "
                                                            "this process may use, or the cluster's CPUs/GPUs)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda or cuda:N (default: the grid's device, else cpu)."),
    threads: Optional[int] = typer.Option(None, min=1, help="torch CPU threads per run (default 1: many small runs "
                                                            "scale across worker processes, not threads)."),
    data_root: Optional[Path] = typer.Option(None, help="Folder of the real sets for registered task names "
                                                        "(default: $MEDVTAB_DATA, else shared/data beside the "
                                                        "project)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the grid (tuning studies, runs per group, which "
                                                          "are finished) and run nothing."),
    tune: bool = typer.Option(True, "--tune/--no-tune", help="Tune every (task, method) on validation first when "
                                                             "the grid has a 'tune' section (--no-tune: defaults)."),
    tune_storage: Optional[str] = typer.Option(None, help="Optuna storage URL of the tuning studies (default "
                                                          "sqlite:///DIR/tuning.db; e.g. a PostgreSQL URL on a "
                                                          "cluster)."),
):
    """Run a grid of (task, method, seed, config) runs into a resumable results store; finished runs are never
    recomputed, failed runs are recorded in DIR/failures/ and retried by the next run of the same command."""
    # imported here, not at the top: keeps CLI start-up fast
    from medvtab.bench.grid import expand_grid, load_grid_file
    from medvtab.bench.suites import SUITES, build_suite
    from medvtab.bench.tune import tuning_of

    if (suite is None) == (config is None):
        raise MedvtabError("give exactly one of --suite (" + ", ".join(SUITES) + ") and --config FILE")
    if quick and suite is None:
        raise MedvtabError("option '--quick': only with --suite (a --config grid sets its own budget)")
    if address is not None and executor != "ray":
        raise MedvtabError("option '--address': only with --executor ray")
    if workers is not None and executor == "serial":
        raise MedvtabError("option '--workers': only with --executor local or ray")
    method_list = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else None
    if method_list is not None and not method_list:
        raise MedvtabError("option '--methods': no method names given")
    if suite is not None:  # one suite, or several into one store: --suite mini,mini-ablations
        names = [n.strip() for n in suite.split(",") if n.strip()]
        grids = [build_suite(n, quick=quick) for n in names]
        specs = [spec for n, g in zip(names, grids) for spec in expand_grid(g, methods=method_list, seeds=seeds,
                                                                            where=f"suite '{n}'", allow_empty=True)]
        if not specs:
            raise MedvtabError(f"option '--methods': no run of suite '{suite}' uses any of {', '.join(method_list)}")
        grid, name = grids[0], "+".join(names)
    else:
        grid = load_grid_file(config)
        specs = expand_grid(grid, methods=method_list, seeds=seeds, where=str(config))
        name, grids = grid.name, [grid]
    tuning = tuning_of(grids, tune_storage) if tune else None
    device = device or grid.device or "cpu"
    root = data_root if data_root is not None else grid.data_root
    if dry_run:
        from medvtab.bench.runner import print_dry_run
        if tuning is not None:
            from medvtab.bench.tune import print_tuning_plan
            specs = print_tuning_plan(out, specs, tuning)
        print_dry_run(out, specs, data_root=root)
        return
    from medvtab.bench.runner import run_grid

    info = {"profile": "quick" if quick else "default", "config": None if config is None else str(config),
            "methods": method_list, "seeds": seeds}
    summary = run_grid(out, specs, suite=name, device=device, data_root=root, executor=executor, address=address,
                       workers=workers, threads=threads, info=info, tuning=tuning)
    if summary.failed:
        raise typer.Exit(1)


def report(
    bench_dir: Path = typer.Argument(..., help="A `medvtab bench --out` directory (bench.json + runs/)."),
    out: Optional[Path] = typer.Option(None, help="The HTML report to write (default DIR/report.html); the markdown "
                                                  "(.md) and figures/ go beside it."),
    attention: bool = typer.Option(True, "--attention/--no-attention",
                                   help="Draw attention maps (rebuilds one DynaMer model from its run directory)."),
):
    """Write the bench results as the papers' tables and figures: report.md, a self-contained report.html and
    PNGs in figures/ (missing and failed runs listed)."""
    # imported here, not at the top: keeps CLI start-up fast
    from medvtab.bench.report.write import write_report

    result = write_report(bench_dir, out, attention=attention)
    print(json.dumps({"html": str(result.html_path), "markdown": str(result.md_path),
                      "figures": [str(f.path) for f in result.figures().values()]}, indent=2))
