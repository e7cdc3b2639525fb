"""The evaluation's numbers as text: one line for ``vqa eval``, Markdown tables for the pipeline (the targets side by
side, then each target's question types)."""
from __future__ import annotations

from typing import Callable

KEYS = ("closed_accuracy", "open_accuracy", "overall_accuracy", "open_token_f1")
ROWS: tuple[tuple[str, Callable[[dict], dict | None]], ...] = (
    ("fused model, free generation", lambda m: m),
    ("fused model, restricted closed answers", lambda m: m["restricted"]),
    ("shuffled-image control", lambda m: m["baselines"]["shuffled_image"]),
    ("shuffled-image control, restricted", lambda m: m["baselines"]["shuffled_image"]["restricted"]),
    ("image-blind baseline", lambda m: m["baselines"]["image_blind"]),
    ("image-blind baseline, restricted", lambda m: m["baselines"]["image_blind"]["restricted"]),
    ("majority answer per type", lambda m: m["baselines"]["majority"]),
    ("paper (BiomedCLIP + RadBloomz-7b)", lambda m: m.get("paper")),
)


def _num(value) -> str:
    return "" if value is None else f"{value:.3f}"


def _triple(m: dict) -> str:
    return "/".join("-" if m[k] is None else f"{m[k]:.3f}" for k in KEYS[:3])


def summary_line(metrics: dict) -> str:
    """closed/open/overall accuracy of the model (free and restricted), the control and both baselines, one line."""
    b = metrics["baselines"]
    return (f"{metrics['data']} {metrics['split']} closed/open/overall: model {_triple(metrics)} "
            f"(restricted {_triple(metrics['restricted'])}), shuffled image {_triple(b['shuffled_image'])}, "
            f"image-blind {_triple(b['image_blind'])}, majority {_triple(b['majority'])}")


def side_by_side(targets: dict[str, dict]) -> str:
    """One Markdown table: a row per model, baseline or control; closed / open / overall / open token F1 per target."""
    names = list(targets)
    head = "| |" + "".join(f" {n} closed | {n} open | {n} overall | {n} open F1 |" for n in names)
    lines = [head, "|---|" + "---|" * (4 * len(names))]
    for label, pick in ROWS:
        cells = []
        for name in names:
            m = pick(targets[name]) or {}
            cells += [_num(m.get(k)) for k in KEYS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    counts = ", ".join(f"{n}: {m['n_closed']} closed + {m['n_open']} open" for n, m in targets.items())
    return "\n".join(lines) + f"\n\n({counts} questions; restricted: closed answers chosen among the training set's)"


def question_types(name: str, metrics: dict) -> str:
    """A Markdown table of one target's accuracy per question type (SLAKE: content type), free generation."""
    b = metrics["baselines"]
    columns = (("fused", metrics), ("shuffled image", b["shuffled_image"]), ("image-blind", b["image_blind"]),
               ("majority", b["majority"]))
    lines = [f"| {name} question type | n | " + " | ".join(c for c, _ in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for qtype, row in metrics["per_question_type"].items():
        cells = [_num(m["per_question_type"][qtype]["accuracy"]) for _, m in columns]
        lines.append(f"| {qtype} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
