"""The report as markdown (``report.md``): every string from data escaped, `code` spans kept as code."""
from __future__ import annotations

import html
import re

from medvtab.bench.report.tables import CODE_SPAN, Report


def _md_escape(text: str, in_table: bool = False) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"([\\*_\[\]])", r"\\\1", text)
    text = text.replace("\n", " ")
    return text.replace("|", "\\|") if in_table else text


def md_inline(text: str, in_table: bool = False) -> str:
    """Plain text with `code` spans -> markdown (everything else escaped)."""
    parts = CODE_SPAN.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            fence = "``" if "`" in part else "`"
            out.append(f"{fence}{part.replace('|', chr(92) + '|') if in_table else part}{fence}")
        else:
            out.append(_md_escape(part, in_table))
    return "".join(out)


def render_markdown(report: Report, figure_rel: dict[str, str]) -> str:
    """``figure_rel``: figure key -> the PNG's path relative to the markdown file."""
    lines = [f"# {md_inline(report.title)}", ""]
    for label, value in report.header:
        lines.append(f"- **{md_inline(label)}**: {md_inline(value)}")
    lines += ["", "Contents: " + " · ".join(md_inline(s.title) for s in report.sections), ""]
    for s in report.sections:
        lines += [f"## {md_inline(s.title)}", ""]
        for p in s.paragraphs:
            lines += [md_inline(p), ""]
        for t in s.tables:
            lines += [f"### {md_inline(t.title)}", ""]
            if t.rows:
                lines.append("| " + " | ".join(md_inline(c, True) for c in t.columns) + " |")
                lines.append("|" + "---|" * len(t.columns))
                for row in t.rows:
                    cells = []
                    for c in row:
                        text = md_inline(c.text, True) + c.mark
                        cells.append(f"**{text}**" if c.best and c.text else text)
                    lines.append("| " + " | ".join(cells) + " |")
                lines.append("")
            for n in t.notes:
                lines += [f"*{md_inline(n)}*", ""]
        for f in s.figures:
            lines += [f"![{md_inline(f.key)}]({figure_rel[f.key]})", "", f"*{md_inline(f.caption)}*", ""]
    return "\n".join(lines).rstrip() + "\n"
