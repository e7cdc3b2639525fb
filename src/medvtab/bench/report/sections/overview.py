"""What the report is about: the header (suite, runs, machine, how to reproduce) and the tasks of the grid."""
from __future__ import annotations

import datetime
import math
from pathlib import Path

from medvtab.bench.report.load import Bench
from medvtab.bench.report.stats import mean_std
from medvtab.bench.report.tables import MISSING, C, Section, Table, fmt_pct, ordered
from medvtab.data.catalogue import get_task
from medvtab.engine import rundir
from medvtab.errors import MedvtabError


def _describe_machine(config: dict) -> str:
    m = config.get("machine") if isinstance(config.get("machine"), dict) else {}
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    parts = [str(m.get("platform", "unknown platform")), f"Python {m.get('python', '?')}",
             f"torch {m.get('torch', '?')}", f"torch threads {m.get('threads', '?')}",
             f"device {train.get('device', '?')}"]
    return ", ".join(parts)


def reproduce_command(bench: Bench) -> str:
    """The `medvtab bench` command that fills this directory, from what bench.json recorded."""
    info = bench.info
    if info.get("command"):
        return str(info["command"])
    parts = ["medvtab bench"]
    parts.append(f"--config {info['config']}" if info.get("config") else f"--suite {info.get('suite', '?')}")
    if info.get("profile") == "quick":
        parts.append("--quick")
    if info.get("methods"):
        parts.append("--methods " + ",".join(map(str, info["methods"])))
    if info.get("seeds"):
        parts.append(f"--seeds {info['seeds']}")
    if info.get("device") and info.get("device") != "cpu":
        parts.append(f"--device {info['device']}")
    if info.get("executor") and info.get("executor") != "serial":
        parts.append(f"--executor {info['executor']}")
    parts.append(f"--out {bench.root}")
    return " ".join(parts)


def header(bench: Bench, out: Path) -> list[tuple[str, str]]:
    specs = [r.spec for r in bench.runs]
    done = bench.finished
    machines: dict[str, int] = {}
    for r in done:
        text = _describe_machine(r.config or {})
        machines[text] = machines.get(text, 0) + 1
    stamps = sorted((r.dir / rundir.METRICS).stat().st_mtime for r in done)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    if stamps:
        span = [datetime.datetime.fromtimestamp(s, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
                for s in (stamps[0], stamps[-1])]
        ran = f"{span[0]} to {span[1]} UTC (run directories' finish times)"
    else:
        ran = "no finished runs"
    random_init = sorted({b.get("spec", "?") for r in done for b in (r.config or {}).get("backbones", [])
                          if isinstance(b, dict) and b.get("random_init")})
    pairs = ordered(f"{s.general} + {s.medical}" for s in specs)
    suite = str(bench.info.get("suite", "?"))
    command = reproduce_command(bench)
    epochs = sorted({str((r.config or {}).get("train", {}).get("epochs", "?")) for r in done})
    rows = [
        ("Generated", when),
        ("Bench directory", str(bench.root)),
        ("Suite", suite),
        ("Runs", f"{len(done)} of {len(bench.runs)} grid runs finished"
                 + (f"; {len(bench.runs) - len(done)} missing, of them {len(bench.failures)} failed (listed at the "
                    f"end)" if len(done) < len(bench.runs) else "")),
        ("Groups", ", ".join(f"{g} ({sum(r.finished for r in bench.group(g))}/{len(bench.group(g))})"
                             for g in ordered(s.group for s in specs)) or "none"),
        ("Seeds", ", ".join(str(s) for s in sorted({s.seed for s in specs})) or "none"),
        ("Tasks", ", ".join(ordered(s.task for s in specs)) or "none"),
        ("Backbones (general + medical)", "; ".join(pairs) or "none"),
        ("Epochs", ", ".join(epochs) or "?"),
        ("Machine", "; ".join(f"{m} ({n} runs)" for m, n in machines.items()) or "unknown (no finished runs)"),
        ("Runs finished", ran),
        ("Reproduce", f"`{command}` then `medvtab report {bench.root}`"
                      + (f" (this report: `{out}`)" if out else "")),
    ]
    for k, v in bench.info.items():
        if k not in ("suite", "command") and isinstance(v, (str, int, float, bool)):
            rows.append((f"Grid: {k}", str(v)))
    if random_init:
        rows.append(("Note", f"randomly initialised backbones ({', '.join(random_init)}): these numbers show that "
                             f"the machinery works, not how the methods compare with pre-trained experts"))
    return rows


def tasks_section(bench: Bench) -> Section:
    rows = []
    deduped = any(isinstance(r.metrics.get("dedupe"), dict) for r in bench.finished)
    for task in ordered(r.spec.task for r in bench.runs):
        runs = [r for r in bench.runs if r.spec.task == task]
        done = [r for r in runs if r.finished]
        try:
            info = get_task(task)
            title, mod = info.title, info.modality
        except (MedvtabError, KeyError, ValueError):
            title, mod = "(not in the registry)", "unknown"
        names = next((r.config.get("class_names") for r in done if isinstance(r.config.get("class_names"), list)),
                     None)
        standard = [r for r in done if r.spec.protocol == "standard"]
        test_sizes = ordered(str(r.metrics.get("split_sizes", {}).get("test", "?")) for r in standard)
        floor = mean_std([r.metric("majority_rate") for r in standard])[0]
        rows.append([C(task), C(title), C(mod), C(", ".join(map(str, names)) if names else MISSING),
                     C(" / ".join(test_sizes) or MISSING),
                     C(fmt_pct(floor, math.nan, int(math.isfinite(floor))), floor),
                     C(f"{len(done)}/{len(runs)}")]
                    + ([C(dedupe_counts(done))] if deduped else []))
    notes = ["Modality from the task registry (medvtab data list); class names from the runs' config.json."]
    if deduped:
        notes.append("Deduplicated runs (grid field `dedupe: true`, as `medvtab train --dedupe`) drop every "
                     "validation image identical to a training image and every test image identical to a training "
                     "or validation image; the column gives the images dropped per split, as the runs recorded them "
                     "(distinct counts where protocols or seeds differ).")
    table = Table("tasks", "Tasks in this grid",
                  ["Task", "Title", "Modality", "Classes", "Test images (standard protocol)", "Majority-class rate (%)",
                   "Runs finished"] + (["Evaluation images dropped (dedupe)"] if deduped else []), rows, notes)
    return Section("tasks", "Tasks", tables=[table])


def dedupe_counts(runs) -> str:
    """The distinct per-split counts that the task's deduplicated runs dropped ("val 4, test 4"), or '-'."""
    counts = ordered(", ".join(f"{split} {n}" for split, n in r.metrics["dedupe"].items())
                     for r in runs if isinstance(r.metrics.get("dedupe"), dict))
    return " / ".join(counts) or MISSING
