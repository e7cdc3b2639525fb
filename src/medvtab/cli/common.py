"""What every command group shares: notes on stderr, the training and counting progress bars, ``KEY=VALUE``
options and the one-line error handler."""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

from medvtab.atomic import CAUSES
from medvtab.errors import MedvtabError

err_console = Console(stderr=True)


def note(message: str) -> None:
    """A note or warning on stderr, one unwrapped line."""
    err_console.print(message, markup=False, highlight=False, soft_wrap=True)


@contextmanager
def loss_progress(description: str):
    """A progress bar over training steps (on a terminal only); yields ``on_step(step, total, loss)``."""
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[loss]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
                  disable=not err_console.is_terminal) as progress:
        bar = progress.add_task(description, total=None, loss="")

        def on_step(step, total, loss):
            progress.update(bar, completed=step, total=total, loss=f"loss {loss:.4f}")
        yield on_step


@contextmanager
def count_progress(description: str, unit: str):
    """Progress over a count of things; yields ``on_progress(done, total)``. On a terminal a bar; elsewhere (a
    scheduler's log, nohup, CI) one plain line on stderr at each tenth and at the end."""
    if err_console.is_terminal:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TimeRemainingColumn(), console=err_console) as progress:
            bar = progress.add_task(description, total=None)
            yield lambda done, total: progress.update(bar, completed=done, total=total)
        return
    start, shown = time.monotonic(), [-1]

    def on_progress(done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth > shown[0]:
            shown[0] = tenth
            print(f"{description}: {done}/{total} {unit} ({100 * done // max(total, 1)}%), "
                  f"{time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    yield on_progress


def epoch_lines(epochs: int):
    """Where stderr is not a terminal (a scheduler's log, nohup, CI), where no progress bar shows: an ``on_epoch``
    that prints one plain line per epoch (epoch, training loss, validation score, seconds); else None."""
    if err_console.is_terminal:
        return None

    def on_epoch(row: dict) -> None:
        metric = "val_auroc" if "val_auroc" in row else "val_accuracy"
        print(f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
              f"{metric.replace('_', ' ')} {row[metric]:.4f}, {row['seconds']:.1f} s", file=sys.stderr, flush=True)
    return on_epoch


def parse_key_values(pairs: list[str]) -> dict:
    """``key=value`` method options; values parse as JSON (numbers, true/false) or stay strings."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MedvtabError(f"option '--set': expected KEY=VALUE, got '{pair}'")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def run_with_one_line_errors(app: typer.Typer) -> None:
    """Run the app; a user error ends it as one line ``error: ...`` with exit status 2, Ctrl-C with 130."""
    try:
        app(standalone_mode=True)
    except MedvtabError as err:
        err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as err:  # the file system refused (read-only, full, a file in the way): the user's to fix
        if err.errno not in CAUSES:
            raise
        where = f"{err.filename}: " if err.filename else ""
        err_console.print(f"error: {where}{CAUSES[err.errno]}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
