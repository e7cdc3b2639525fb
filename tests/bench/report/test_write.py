"""`medvtab report`: the files written where asked (the store itself only read), and the exit status."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_cli_writes_the_report_where_asked(run_medvtab, bench_store, tmp_path):
    out = tmp_path / "site" / "results.html"
    code, stdout, _ = run_medvtab("report", bench_store, "--out", out, "--no-attention")
    assert code == 0
    written = json.loads(stdout)
    assert written["html"] == str(out) and written["markdown"] == str(out.with_suffix(".md"))
    assert out.is_file() and out.with_suffix(".md").is_file()
    assert sorted(Path(f).name for f in written["figures"]) == ["data_efficiency.png", "params_accuracy.png",
                                                                "routing.png"]
    assert not (bench_store / "report.html").exists()  # the store itself is only read


def test_cli_subprocess_exit_status(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medvtab.cli", "report", str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
