"""Peak anonymous memory and time of ``medvtab data prepare`` against the number of images (issue 19, acceptance 1).

Builds ImageFolder sets of real images (a .npz's train images, resized up to ``--raw-size`` with bicubic and written
as PNGs, repeated to the count as hard links), runs ``medvtab data prepare`` on each at ``--image-size`` with each worker
count, and samples the summed RssAnon (``/proc/PID/status``: anonymous pages only; the memory-mapped output's
file pages, which the kernel can drop, do not count) of the command and all its descendants. Prints one JSON
line per run and the ratio of the largest set's peak to the smallest's. The sets are deleted afterwards
(``--keep`` keeps them).

    python benchmarks/prepare_memory.py [--npz FILE (default: the bundled PneumoniaMNIST)] [--counts 2000 20000] [--workers 1 2] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medvtab.data.loading import bundled_path, read_npz

SAMPLE_S = 0.02


def build_set(npz: Path, root: Path, count: int, raw_size: int) -> None:
    """``count`` PNGs under ``root/CLASS/``: the npz's train (or pooled) images in a fixed shuffled order, resized
    to ``raw_size``; repeats are hard links to the first file (each is still opened and decoded by prepare)."""
    parts = read_npz(npz)
    train = parts.get("train", parts.get("pool"))
    order, written = np.random.default_rng(0).permutation(len(train.images)), {}  # classes mixed from the start
    for n in range(count):
        i = int(order[n % len(order)])
        folder = root / f"class{int(train.labels[i])}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{n:06d}.png"
        if i in written:
            os.link(written[i], path)
            continue
        im = np.asarray(train.images[i])
        Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).resize((raw_size, raw_size),
                                                                        Image.Resampling.BICUBIC).save(path)
        written[i] = path


def rss_anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("RssAnon:")), 0)
    except (FileNotFoundError, ProcessLookupError):
        return 0


def descendants(root: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def measure(cmd: list[str], ok: tuple[int, ...] = (0,)) -> dict:
    """Peak summed RssAnon (MiB) of ``cmd`` and its descendants, the most processes seen, and the wall time; an
    exit status not in ``ok`` stops the benchmark."""
    start = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a chatty command must not block on it
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
        peak, most = 0, 0
        while proc.poll() is None:
            pids = [proc.pid, *descendants(proc.pid)]
            peak, most = max(peak, sum(rss_anon_kib(p) for p in pids)), max(most, len(pids))
            time.sleep(SAMPLE_S)
        seconds = time.monotonic() - start
        log.seek(0)
        err = log.read()
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    return {"peak_rss_anon_mib": round(peak / 1024, 1), "processes": most, "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npz", type=Path, default=bundled_path("pneumoniamnist"), help="real images (the train split or the pool)")
    ap.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--raw-size", type=int, default=256, help="the PNGs' size")
    ap.add_argument("--image-size", type=int, default=224, help="the prepared size")
    ap.add_argument("--dir", type=Path, default=Path("prepare_memory_sets"))
    ap.add_argument("--keep", action="store_true", help="keep the sets and prepared directories")
    args = ap.parse_args()
    results = []
    try:
        for count in args.counts:
            raw = args.dir / f"raw_{count}"
            if not raw.is_dir():
                t = time.monotonic()
                build_set(args.npz, raw, count, args.raw_size)
                print(f"built {raw} ({count} PNGs, {time.monotonic() - t:.0f} s)", file=sys.stderr)
            for workers in args.workers:
                out = args.dir / f"prepared_{count}_w{workers}"
                shutil.rmtree(out, ignore_errors=True)
                cmd = [sys.executable, "-m", "medvtab.cli", "data", "prepare", f"mem{count}", "--src", str(raw),
                       "--out", str(out), "--layout", "imagefolder", "--image-size", str(args.image_size),
                       "--workers", str(workers)]
                row = {"images": count, "workers": workers, "npz": str(args.npz), **measure(cmd)}
                print(json.dumps(row), flush=True)
                results.append(row)
                if not args.keep:
                    shutil.rmtree(out)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    small, large = min(args.counts), max(args.counts)
    for workers in args.workers:
        peak = {r["images"]: r["peak_rss_anon_mib"] for r in results if r["workers"] == workers}
        if small in peak and large in peak and small != large:
            print(json.dumps({"workers": workers, f"ratio_{large}_to_{small}": round(peak[large] / peak[small], 3)}))


if __name__ == "__main__":
    main()
