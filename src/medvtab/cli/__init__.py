"""The ``medvtab`` command line: the root app, its commands and groups, and ``main`` (the console script).

One module per command group: train (train, predict, inspect, methods), pretrain, bench (bench, report), perf,
data (``medvtab data ...``) and vqa (``medvtab vqa ...``); common holds what they share. The modules import
only typer and rich at the top: torch, the engine and the methods load inside the command that runs.
"""
from __future__ import annotations

import typer

from medvtab.cli import bench, data, perf, pretrain, train, vqa
from medvtab.cli.common import run_with_one_line_errors
from medvtab.engine.allocator import keep_freed_memory

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Adapt general + medical vision foundation models to medical imaging tasks.")
for command in (train.train, pretrain.pretrain, train.predict, train.inspect, train.methods, bench.bench,
                bench.report, perf.perf):  # the order `medvtab --help` lists them in
    app.command()(command)
app.add_typer(data.app, name="data", help="Task registry and data checks.")
app.add_typer(vqa.app, name="vqa", help="MedVQA: vision encoder + Q-Former + LM with LoRA.")


def main() -> None:
    keep_freed_memory()  # every command: CPU forwards without a page fault per activation buffer
    run_with_one_line_errors(app)
