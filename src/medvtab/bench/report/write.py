"""The whole report: every section in the papers' order, then the markdown, the HTML page and the figures, each
file written atomically."""
from __future__ import annotations

import os
from pathlib import Path

from medvtab.atomic import atomic_write, make_output_dir
from medvtab.bench.report.load import Bench, load_bench
from medvtab.bench.report.render_html import render_html
from medvtab.bench.report.render_md import render_markdown
from medvtab.bench.report.sections.ablations import ABLATIONS, ablation_section
from medvtab.bench.report.sections.agreement import agreement_section
from medvtab.bench.report.sections.attention import attention_section
from medvtab.bench.report.sections.fewshot import fewshot_section
from medvtab.bench.report.sections.main import main_section
from medvtab.bench.report.sections.missing import missing_section
from medvtab.bench.report.sections.ood import ood_section
from medvtab.bench.report.sections.other_groups import other_groups_section
from medvtab.bench.report.sections.overview import header, tasks_section
from medvtab.bench.report.sections.routing import routing_section
from medvtab.bench.report.sections.scaling import scaling_section
from medvtab.bench.report.sections.tuning import tuning_section
from medvtab.bench.report.sections.warnings import warnings_section
from medvtab.bench.report.tables import Report
from medvtab.errors import MedvtabError

FIGURE_NAMES = ("params_accuracy.png", "data_efficiency.png", "attention.png", "routing.png", "sensitivity.png",
                "scaling_*.png")  # the scaling section draws one per modality


def build_report(bench: Bench, figures_dir: Path, *, out: Path | None = None, attention: bool = True) -> Report:
    sections = [tasks_section(bench), tuning_section(bench, figures_dir), main_section(bench, figures_dir),
                agreement_section(bench), fewshot_section(bench, figures_dir), ood_section(bench)]
    sections += [ablation_section(bench, a) for a in ABLATIONS]
    sections += [s for s in (scaling_section(bench, figures_dir),) if s]
    sections += [routing_section(bench, figures_dir), attention_section(bench, figures_dir, attention)]
    sections += [s for s in (other_groups_section(bench), missing_section(bench), warnings_section(bench)) if s]
    title = f"medvtab bench report: {bench.info.get('suite', bench.root.name)}"
    return Report(title, header(bench, out), sections)


def write_text(path: Path, text: str) -> None:
    """Atomically, readable by all (a report is meant to be shared or served)."""
    def write(tmp):
        Path(tmp).write_text(text, encoding="utf-8")
        os.chmod(tmp, 0o644)
    atomic_write(Path(path), write)


def write_report(root: Path, out: Path | None = None, *, attention: bool = True) -> Report:
    """Write ``out`` (default ``root/report.html``), the markdown beside it (``.md``) and the figures in a
    ``figures/`` folder beside it; every file atomically. Returns the report (tables, figure paths)."""
    bench = load_bench(root)
    html_path = Path(out) if out is not None else Path(root) / "report.html"
    if html_path.exists() and html_path.is_dir():
        raise MedvtabError(f"{html_path}: is a directory; --out names the HTML file to write")
    md_path = html_path.with_suffix(".md")
    figures_dir = html_path.parent / "figures"
    make_output_dir(figures_dir)
    report = build_report(bench, figures_dir, out=html_path, attention=attention)
    made = report.figures()
    for stale in (path for name in FIGURE_NAMES for path in figures_dir.glob(name)):
        if all(f.path.name != stale.name for f in made.values()):  # an earlier report's, not drawn now
            stale.unlink()
    images = {k: f.path.read_bytes() for k, f in made.items()}
    rel = {k: f"{figures_dir.name}/{f.path.name}" for k, f in made.items()}
    markdown, page = render_markdown(report, rel), render_html(report, images)
    write_text(md_path, markdown)
    write_text(html_path, page)
    report.html_path, report.md_path = html_path, md_path
    return report
