"""``medvtab data``: browse the task registry (list, info), check a task's data (check) and convert a raw
download into a prepared directory (prepare).

These commands import no torch themselves.
User errors raise MedvtabError (``error: ...``, exit 2); ``data check`` exits 1 when a check fails.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from medvtab.cli.common import count_progress
from medvtab.errors import MedvtabError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Task registry (list, info), data checks (check) and raw-download conversion (prepare).")


@app.command("list")
def list_(
    modality: Optional[str] = typer.Option(None, help="Only this modality (e.g. colour, x-ray, oct/ct/mri)."),
    benchmark: Optional[str] = typer.Option(None, help="Only this benchmark: med-vtab, fgvc, vtab-1k, bundled."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of every field instead of a table."),
):
    """List every registered task (metadata only; nothing is downloaded)."""
    # imported here, not at the top: keeps CLI start-up fast
    from medvtab.data.catalogue import list_tasks, task_dict

    rows = list_tasks(benchmark, modality)
    if as_json:
        print(json.dumps([task_dict(t) for t in rows], indent=2))
        return
    # imported here, not at the top: keeps CLI start-up fast
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(rows)} tasks")
    for col, kw in (("name", {"no_wrap": True}), ("benchmark", {}), ("modality", {}), ("organ", {}),
                    ("type", {}), ("classes", {"justify": "right"}), ("images", {"justify": "right"})):
        table.add_column(col, **kw)
    for t in rows:
        table.add_row(t.name, t.benchmark, t.modality, t.organ, t.task_type,
                      "?" if t.num_classes is None else str(t.num_classes),
                      "-" if t.images is None else f"{t.images:,}")
    Console().print(table)


@app.command()
def info(task: str = typer.Argument(..., help="A registered task name (see `medvtab data list`).")):
    """Print one task's metadata as JSON."""
    # imported here, not at the top: keeps CLI start-up fast
    from medvtab.data.catalogue import get_task, task_dict

    print(json.dumps(task_dict(get_task(task)), indent=2))


@app.command()
def check(
    task: str = typer.Argument(..., help="Bundled or registered real-set name, a .npz, or an ImageFolder directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    seed: int = typer.Option(0, help="Seed of the carved val/test splits, as in `medvtab train`."),
    image_size: int = typer.Option(224, min=1, help="ImageFolder images are resized to this, as in loading."),
    data_root: Optional[Path] = typer.Option(None, help="Where registered real sets live (default: $MEDVTAB_DATA)."),
):
    """Check a task's data before training (exit 1 on any error).

    Errors: labels out of range, empty classes, unreadable images, duplicate images across splits, patients
    across splits. Warnings (exit 0): class imbalance, tiny splits, known duplicates of a source's own split.
    """
    # imported here, not at the top: keeps CLI start-up fast
    from medvtab.data.check import check_source

    report = check_source(task, seed=seed, image_size=image_size, data_root=data_root)
    print(json.dumps(report.to_dict(), indent=2) if as_json else report.render())
    sys.stdout.flush()
    print(report.summary(), file=sys.stderr)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def prepare(
    task: str = typer.Argument(..., help="A registered task name (its raw layout is the default) or a new name "
                                         "with --layout."),
    src: Path = typer.Option(..., "--src", help="The raw download: a folder (or a .npz for --layout npz)."),
    out: Path = typer.Option(..., "--out", help="The prepared directory to create (must not exist, or be empty)."),
    layout: Optional[str] = typer.Option(None, help="imagefolder, csv, npz, dicom or nifti (default: the "
                                                    "registry's raw layout)."),
    image_size: int = typer.Option(224, min=1, help="Every image is resized to this (square)."),
    csv_file: Optional[Path] = typer.Option(None, "--csv", help="csv layout: the label file (default "
                                                                "SRC/labels.csv)."),
    label_column: Optional[str] = typer.Option(None, help="csv layout: the label column, or A,B,C: the label "
                                                          "columns of a multi-label task."),
    image_column: Optional[str] = typer.Option(None, help="csv layout: the image path column (relative to SRC)."),
    patient_column: Optional[str] = typer.Option(None, help="csv layout: the patient id column."),
    split_column: Optional[str] = typer.Option(None, help="csv layout: the split column (train/val/test)."),
    window: Optional[str] = typer.Option(None, help="dicom layout: a CT window 'center,width' (HU) over the files' "
                                                    "own (default: each file's own window or VOI LUT; a CT "
                                                    "without one: 40,400)."),
    slices: int = typer.Option(8, min=1, help="nifti layout: the middle K axial slices of each volume."),
    uncertain: str = typer.Option("ignore", help="csv multi-label: CheXpert's uncertain (-1) marks: ignore (kept "
                                                 "as unknown, masked from loss and metrics), zeros or ones."),
    allow_outside_root: bool = typer.Option(False, "--allow-outside-root", help="csv layout: accept image paths "
                                                                              "that resolve outside --src."),
    workers: Optional[int] = typer.Option(None, min=1, help="Decoding processes, at most one per 128 files (default: "
                                                            "the CPU count; 1: in this process). The output does "
                                                            "not depend on it."),
):
    """Convert a raw download into a prepared directory (task.json, manifest.csv, images_<size>.npy).

    Images are decoded once, straight into the memory-mapped .npy (memory does not grow with the set), in
    --workers processes; `medvtab train DIR` then reads them memory-mapped. Multi-label CSVs (several label
    columns, or labels joined by | or ;) give a multi-label task.
    """
    # imported here, not at the top: keeps CLI start-up fast
    from medvtab.data.convert import prepare as run_prepare

    try:
        ct_window = None if window is None else tuple(float(v) for v in window.split(","))
        if ct_window is not None and len(ct_window) != 2:
            raise ValueError
    except ValueError:
        raise MedvtabError(f"option '--window': expected 'center,width' (e.g. 40,400), got '{window}'") from None
    with count_progress(f"prepare {task}", "files") as on_progress:
        meta = run_prepare(task, src, out, layout=layout, image_size=image_size, csv_path=csv_file,
                           label_column=label_column, image_column=image_column, patient_column=patient_column,
                           split_column=split_column, window=ct_window, slices=slices, uncertain=uncertain,
                           allow_outside_root=allow_outside_root, workers=workers, on_progress=on_progress)
    kind = "labels (multi-label)" if meta["task_type"] == "multi-label" else "classes"
    print(f"prepared {meta['name']}: {meta['images']} images, {meta['num_classes']} {kind}, "
          f"{meta['image_size']}x{meta['image_size']}x{meta['channels']} ({meta['layout']}) -> {out}")
