"""One task's catalogue record (:class:`TaskInfo`) and the vocabularies its fields use.

The field conventions are in :mod:`medvtab.data.catalogue`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

BENCHMARKS = ("med-vtab", "fgvc", "vtab-1k", "bundled")
TASK_TYPES = ("multi-class", "multi-label", "ordinal")
RAW_LAYOUTS = ("imagefolder", "csv", "npz", "dicom", "nifti")
SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
DR_GRADES = ("no DR", "mild", "moderate", "severe", "proliferative DR")  # diabetic-retinopathy grades 0-4


@dataclass(frozen=True)
class TaskInfo:
    name: str
    title: str
    benchmark: str
    modality: str
    organ: str
    task_type: str
    classes: int | tuple[str, ...] | None
    images: int | None
    download: str
    licence: str
    citation: str
    raw_layout: str
    patient_ids: bool
    source_group: str
    notes: str = ""

    @property
    def num_classes(self) -> int | None:
        if isinstance(self.classes, tuple):
            return len(self.classes)
        return self.classes

    @property
    def class_names(self) -> list[str] | None:
        return list(self.classes) if isinstance(self.classes, tuple) else None
