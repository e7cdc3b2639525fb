"""The report's figures: PNGs written beside the report, embedded in the HTML page, linked from the markdown."""
from __future__ import annotations


def test_figures_written_and_embedded(bench_report):
    figures = bench_report.figures()
    assert set(figures) == {"params_accuracy", "data_efficiency", "routing", "attention"}
    for ref in figures.values():
        data = ref.path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
        assert ref.path.parent == bench_report.html_path.parent / "figures"
    html_text = bench_report.html_path.read_text()
    assert html_text.count('src="data:image/png;base64,') == 4
    assert "http://" not in html_text and "https://" not in html_text  # self-contained
    md = bench_report.md_path.read_text()
    for ref in figures.values():
        assert f"](figures/{ref.path.name})" in md
    leftovers = [p.name for p in bench_report.html_path.parent.rglob(".*.tmp")]
    assert not leftovers  # atomic writes leave no temp files
