"""The report as one self-contained HTML page (``report.html``): figures inlined as data URIs, the style sheet
(``assets/report/style.css``) inlined, a Content-Security-Policy that allows nothing else, and every string
from data escaped, so names from data (tasks, classes, methods, run ids, paths) can never become markup."""
from __future__ import annotations

import base64
import html
import re
from importlib import resources

from medvtab.bench.report.tables import CODE_SPAN, MISSING, Report

_NUMERIC = re.compile(r"^[-+]?\d[\d.,]*(X|x| %)?( ± [\d.]+)?( \(n=\d+\))?$")


def html_inline(text: str) -> str:
    """Plain text with `code` spans -> HTML (everything escaped)."""
    parts = CODE_SPAN.split(text)
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def style_sheet() -> str:
    return resources.files("medvtab").joinpath("assets/report/style.css").read_text(encoding="utf-8")


def render_html(report: Report, images: dict[str, bytes]) -> str:
    """``images``: figure key -> the PNG's bytes."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
           "style-src 'unsafe-inline'\">",
           '<link rel="icon" href="data:,">', f"<title>{e(report.title)}</title>", f"<style>\n{style_sheet()}</style>",
           "</head>", "<body>", f"<h1>{html_inline(report.title)}</h1>", '<dl class="meta">']
    for label, value in report.header:
        out.append(f"<dt>{html_inline(label)}</dt><dd>{html_inline(value)}</dd>")
    out += ["</dl>", "<nav><ul>"]
    out += [f'<li><a href="#{e(s.key)}">{html_inline(s.title)}</a></li>' for s in report.sections]
    out.append("</ul></nav>")
    for s in report.sections:
        out.append(f'<section id="{e(s.key)}">')
        out.append(f"<h2>{html_inline(s.title)}</h2>")
        out += [f"<p>{html_inline(p)}</p>" for p in s.paragraphs]
        for t in s.tables:
            out.append('<div class="scroll">')
            out.append(f'<table class="results" id="{e(t.key)}"><caption>{html_inline(t.title)}</caption>')
            out.append("<thead><tr>" + "".join(f'<th scope="col">{e(c)}</th>' for c in t.columns) + "</tr></thead>")
            out.append("<tbody>")
            for row in t.rows:
                tds = []
                for c in row:
                    text = e(c.text) + e(c.mark)
                    classes = " ".join(k for k, on in (("num", _NUMERIC.match(c.text) or c.text == MISSING),
                                                       ("best", c.best and c.text), ("wrap", len(c.text) > 48))
                                       if on)
                    attr = f' class="{classes}"' if classes else ""
                    body = f"<strong>{text}</strong>" if c.best and c.text else text
                    tds.append(f"<td{attr}>{body}</td>")
                out.append("<tr>" + "".join(tds) + "</tr>")
            out.append("</tbody></table></div>")
            out += [f'<p class="note">{html_inline(n)}</p>' for n in t.notes]
        for f in s.figures:
            data = base64.b64encode(images[f.key]).decode("ascii")
            out.append(f'<figure id="figure-{e(f.key)}"><img src="data:image/png;base64,{data}" '
                       f'alt="{e(f.caption)}"><figcaption>{html_inline(f.caption)}</figcaption></figure>')
        out.append("</section>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
