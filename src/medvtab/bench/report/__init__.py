"""``medvtab report DIR``: the results of a bench directory as the papers' tables and figures, in
``DIR/report.md`` and a self-contained ``DIR/report.html`` (figures inlined as data URIs), PNGs in
``DIR/figures/``.

Every number comes from the store (``bench.json`` and the run directories); nothing is hard-coded. Any group
may be absent or partial: tables show what exists, and the unfinished runs are listed. The path of the data:

    load.py (the store -> Bench) -> sections/ (Bench -> Section: tables of cells, figures; statistics from
    stats.py, the table model and cell formats from tables.py, PNGs from figures.py) -> render_md.py and
    render_html.py (Report -> text) -> write.py (the files, written atomically)
"""
