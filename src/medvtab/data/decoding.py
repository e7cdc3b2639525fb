"""Decoding the sources that ``medvtab data prepare`` listed, in their order, in this process or in worker
processes.

A :class:`Source` is one file (an image, a DICOM, a NIfTI volume) or one array row; :func:`decode` turns it into
its resized uint8 image(s). :func:`decode_in_order` yields every source's :class:`Decoded` in the listed order
while only a bounded window of chunks is in flight, so memory does not grow with the number of sources. Workers
are spawned (no fork: the same behaviour on every platform, no inherited threads) and run :func:`decode_chunk`,
a top-level function; decoding is deterministic, so any worker count gives the same images.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from medvtab.data.dicom_nifti import DEFAULT_SLICES, read_dicom, read_nifti
from medvtab.data.images import read_image, resize
from medvtab.errors import MedvtabError

KINDS = ("image", "dicom", "nifti", "array")
CHUNK = 16  # sources per task sent to a worker
PER_WORKER = 128  # sources per worker at least: below that, starting a process costs more than it saves
IN_FLIGHT = 2  # chunks per worker submitted ahead of the one being written


@dataclass(frozen=True)
class Options:
    """How sources are decoded: the square output size, a CT window over the files' own, NIfTI slices."""
    size: int
    window: tuple[float, float] | None = None
    slices: int = DEFAULT_SLICES


@dataclass(frozen=True, slots=True)
class Source:
    """One thing to decode: ``kind`` (one of :data:`KINDS`) and where it is (a file's path, or an array for
    "array"). Paths are strings: a list of 200,000 Path objects alone would take ~100 MB."""
    kind: str
    where: str | np.ndarray

    def images_at_most(self, options: Options) -> int:
        return options.slices if self.kind == "nifti" else 1


@dataclass
class Decoded:
    """A source's images (uint8 ``(size, size, 1|3)``; a NIfTI volume gives several), the patient and study ids
    the file holds (DICOM), or ``error``: why it is unreadable (then no images)."""
    images: list[np.ndarray] = field(default_factory=list)
    patient_id: str = ""
    study_id: str = ""
    error: str = ""


def decode(source: Source, options: Options) -> Decoded:
    """``source`` decoded under ``options``; an unreadable file gives ``Decoded(error=...)``, not an exception."""
    try:
        if source.kind == "image":
            return Decoded([read_image(Path(source.where), options.size)])
        if source.kind == "dicom":
            arr, patient, study = read_dicom(Path(source.where), options.window)
            return Decoded([resize(arr, options.size)], patient, study)
        if source.kind == "nifti":
            return Decoded([resize(p, options.size) for p in read_nifti(Path(source.where), options.slices)])
        if source.kind == "array":
            return Decoded([resize(source.where, options.size)])
    except MedvtabError as err:
        return Decoded(error=str(err).split(": ", 1)[-1])  # the path is the caller's to name
    raise ValueError(f"unknown source kind {source.kind!r}")


def decode_chunk(sources: Sequence[Source], options: Options) -> list[Decoded]:
    """:func:`decode` of each source: one worker task."""
    return [decode(s, options) for s in sources]


def default_workers() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_in_order(sources: Sequence[Source], options: Options, workers: int = 1,
                    on_decoded: Callable[[int], None] = lambda done: None) -> Iterator[Decoded]:
    """Each source's :class:`Decoded`, in the order of ``sources``; ``workers`` processes at most (one per
    :data:`PER_WORKER` sources; 1: in this process).
    ``on_decoded(done)`` is called after each source with the count so far."""
    workers = min(workers, len(sources) // PER_WORKER, -(-len(sources) // CHUNK))
    done = 0
    if workers <= 1:
        for source in sources:
            got = decode(source, options)
            done += 1
            on_decoded(done)
            yield got
        return
    # imported here: only a run with workers needs them
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        todo = (sources[i:i + CHUNK] for i in range(0, len(sources), CHUNK))
        pending = deque(pool.submit(decode_chunk, c, options) for c in islice(todo, workers * IN_FLIGHT))
        while pending:  # a bounded window, taken in order: results never pile up
            try:
                results = pending.popleft().result()
            except BrokenProcessPool:
                raise MedvtabError("a decoding worker process died (out of memory?); retry with fewer --workers, "
                                   "or --workers 1") from None
            following = next(todo, None)
            if following is not None:  # submitted before writing, so the workers stay busy
                pending.append(pool.submit(decode_chunk, following, options))
            done += len(results)
            on_decoded(done)
            yield from results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
