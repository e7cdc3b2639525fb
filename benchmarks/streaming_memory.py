"""Peak anonymous memory of ``medvtab train`` over a prepared task against its number of images (issue 19,
acceptance 1): the streaming data path must not grow with the set.

For each count, builds an ImageFolder set of real images as ``benchmarks/prepare_memory.py`` does (a .npz's train
images resized up to ``--raw-size``, repeats as hard links), prepares it with ``medvtab data prepare`` at
``--image-size`` (a pooled task: training carves 70/10/20 from it), runs ``medvtab data check`` on it, then one
epoch of ``medvtab train`` of each method on the tiny pair with each worker count, sampling the summed RssAnon of
the command and all its descendants (``/proc/PID/status``: anonymous pages only; the memory map's file pages, which
the kernel can drop, do not count). Repeated images are duplicates across the carved splits, which the data check
reports as an error (exit 1, accepted here): training runs with ``--no-check``, the check measured on its own.
Prints one JSON line per command and the ratio of the largest set's peak to the smallest's. The sets are deleted
afterwards (``--keep`` keeps them).

    python benchmarks/streaming_memory.py [--counts 2000 20000] [--methods linear dynamer] [--workers 0 2] [--dir DIR]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from prepare_memory import build_set, measure  # this folder's sibling benchmark

from medvtab.data.loading import bundled_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--npz", type=Path, default=bundled_path("pneumoniamnist"), help="real images (the train split or the pool)")
    ap.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--methods", nargs="+", default=["linear", "dynamer"])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="--num-workers of medvtab train")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--raw-size", type=int, default=256, help="the PNGs' size")
    ap.add_argument("--image-size", type=int, default=224, help="the prepared size")
    ap.add_argument("--dir", type=Path, default=Path("streaming_memory_sets"))
    ap.add_argument("--keep", action="store_true", help="keep the sets, prepared directories and runs")
    args = ap.parse_args()
    cli = [sys.executable, "-m", "medvtab.cli"]
    results = []
    try:
        for count in args.counts:
            raw, prepared = args.dir / f"raw_{count}", args.dir / f"prepared_{count}"
            if not raw.is_dir():
                t = time.monotonic()
                build_set(args.npz, raw, count, args.raw_size)
                print(f"built {raw} ({count} PNGs, {time.monotonic() - t:.0f} s)", file=sys.stderr)
            shutil.rmtree(prepared, ignore_errors=True)
            row = {"command": "prepare", "images": count, "workers": 1, **measure(
                [*cli, "data", "prepare", f"mem{count}", "--src", str(raw), "--out", str(prepared), "--layout",
                 "imagefolder", "--image-size", str(args.image_size), "--workers", "1"])}
            print(json.dumps(row), flush=True)
            results.append(row)
            row = {"command": "check", "images": count, "workers": 0,
                   **measure([*cli, "data", "check", str(prepared)], ok=(0, 1))}
            print(json.dumps(row), flush=True)
            results.append(row)
            for method in args.methods:
                for workers in args.workers:
                    out = args.dir / f"run_{count}_{method}_w{workers}"
                    shutil.rmtree(out, ignore_errors=True)
                    cmd = [*cli, "train", "--task", str(prepared), "--method", method, "--epochs", "1",
                           "--batch-size", str(args.batch_size), "--out", str(out), "--num-workers", str(workers),
                           "--no-check"]
                    row = {"command": "train", "method": method, "images": count, "workers": workers, **measure(cmd)}
                    run = json.loads((out / "metrics.json").read_text())
                    row.update(split_sizes=run["split_sizes"], accuracy=run["accuracy"],
                               train_seconds=run["train_seconds"])
                    print(json.dumps(row), flush=True)
                    results.append(row)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    small, large = min(args.counts), max(args.counts)
    for key in sorted({(r["command"], r.get("method"), r["workers"]) for r in results}, key=str):
        peak = {r["images"]: r["peak_rss_anon_mib"] for r in results if (r["command"], r.get("method"), r["workers"]) == key}
        if small in peak and large in peak and small != large:
            print(json.dumps({"command": key[0], "method": key[1], "workers": key[2],
                              f"ratio_{large}_to_{small}": round(peak[large] / peak[small], 3)}))


if __name__ == "__main__":
    main()
