"""Task catalogue: metadata (never data) for every task medvtab knows by name.

Covers the 23 Med-VTAB tasks of the DynaMer paper's appendix A (A.1 colour, A.2 X-ray, A.3 OCT/CT/MRI),
the 5 FGVC tasks, the 19 VTAB-1k tasks and the 5 real sets bundled or shared with medvtab.

Field conventions:

- ``modality``: for Med-VTAB the paper's group ("colour", "x-ray", "oct/ct/mri"); for FGVC "natural"; for
  VTAB-1k its group ("natural", "specialized", "structured"); for bundled sets the actual modality.
- ``organ``: for Med-VTAB the organ label of the paper's result tables (lower case); "n/a" for
  general-domain tasks.
- ``classes``: an int, a tuple of class names where the source publishes them, or None where unknown.
- ``images``: the count the DynaMer paper's appendix A gives (Med-VTAB); the count of the shared ``.npz``
  (bundled sets, from the shared data README); None where the paper gives none (FGVC, VTAB-1k).
- ``download``: the official page, as text only. Nothing here is ever fetched.
- ``raw_layout``: the converter layout the source ships in. "imagefolder" = one folder per class;
  "csv" = images plus an index file mapping image to label (CSV, TXT, JSON or MAT); "npz" =
  MedMNIST-style arrays; "dicom" / "nifti" = medical volumes or radiographs.
- ``source_group``: the underlying image collection. Two tasks with the same group are built from the same
  images, so pre-training on one leaks into the other (see :func:`overlapping_sources`). Partial overlaps
  between compilations (e.g. COVIDx) are recorded in ``notes`` only.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import asdict

from medvtab.data.catalogue.bundled import BUNDLED_SETS
from medvtab.data.catalogue.general import FGVC_AND_VTAB_1K
from medvtab.data.catalogue.med_vtab import MED_VTAB
from medvtab.data.catalogue.taskinfo import BENCHMARKS, RAW_LAYOUTS, SLUG, TASK_TYPES, TaskInfo
from medvtab.errors import MedvtabError

__all__ = ["BENCHMARKS", "RAW_LAYOUTS", "SLUG", "TASKS", "TASK_TYPES", "TaskInfo", "get_task", "list_tasks",
           "overlapping_sources", "task_dict"]

_ENTRIES: tuple[TaskInfo, ...] = (*MED_VTAB, *FGVC_AND_VTAB_1K, *BUNDLED_SETS)

TASKS: dict[str, TaskInfo] = {t.name: t for t in _ENTRIES}
if len(TASKS) != len(_ENTRIES):  # pragma: no cover - guards the tables above
    raise RuntimeError("duplicate task name in medvtab.data.catalogue")


def _normalise(name: str) -> str:
    return re.sub(r"[\s_/]+", "-", str(name).strip().lower())


def get_task(name: str) -> TaskInfo:
    """The task called ``name`` (case, spaces and underscores forgiven); MedvtabError with close matches."""
    key = _normalise(name)
    if key in TASKS:
        return TASKS[key]
    if f"vtab-{key}" in TASKS:
        return TASKS[f"vtab-{key}"]
    close = difflib.get_close_matches(key, list(TASKS), n=3, cutoff=0.6)
    close += [n for n in TASKS if key and key in n and n not in close][: max(0, 3 - len(close))]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else \
        f"; known benchmarks: {', '.join(BENCHMARKS)} (list them with `medvtab data list`)"
    raise MedvtabError(f"unknown task '{name}'{hint}")


def list_tasks(benchmark: str | None = None, modality: str | None = None) -> list[TaskInfo]:
    """Tasks in catalogue order, optionally filtered by benchmark and by modality (case-insensitive)."""
    if benchmark is not None and benchmark.lower() not in BENCHMARKS:
        raise MedvtabError(f"unknown benchmark '{benchmark}'; choose from {', '.join(BENCHMARKS)}")
    rows = [t for t in TASKS.values() if benchmark is None or t.benchmark == benchmark.lower()]
    if modality is not None:
        known = sorted({t.modality for t in rows})
        if modality.lower() not in known:
            raise MedvtabError(f"unknown modality '{modality}'"
                               f"{' for ' + benchmark if benchmark else ''}; choose from {', '.join(known)}")
        rows = [t for t in rows if t.modality == modality.lower()]
    return rows


def task_dict(info: TaskInfo) -> dict:
    """JSON-ready dict of every field, plus ``num_classes``; class names become a list."""
    row = asdict(info)
    if isinstance(info.classes, tuple):
        row["classes"] = list(info.classes)
    row["num_classes"] = info.num_classes
    return row


def overlapping_sources(task_name: str, pretrained_on: tuple[str, ...]) -> list[str]:
    """The tasks in ``pretrained_on`` built from the same images as ``task_name`` (same ``source_group``).

    Names are task slugs (normalised like :func:`get_task`); the result holds canonical slugs, in the
    order given, without repeats. An unknown name raises MedvtabError.
    """
    if isinstance(pretrained_on, str):
        pretrained_on = (pretrained_on,)
    group = get_task(task_name).source_group
    out: list[str] = []
    for name in pretrained_on:
        other = get_task(name)
        if other.source_group == group and other.name not in out:
            out.append(other.name)
    return out
