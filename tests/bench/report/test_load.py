"""Reading a store: a missing, empty or corrupt bench directory, or corrupt run metrics, is a one-line user error."""
from __future__ import annotations

import pytest

from medvtab.bench.report.load import load_bench
from medvtab.bench.store import RunSpec, run_dir, write_grid
from medvtab.errors import MedvtabError


def test_bad_directories_are_user_errors(run_medvtab, tmp_path, bench_store):
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "bench.json").write_text("{ not json")
    not_object = tmp_path / "list"
    not_object.mkdir()
    (not_object / "bench.json").write_text("[1, 2]")
    run = next(p for p in (bench_store / "runs").iterdir() if p.is_dir())
    for path, message in ((tmp_path / "absent", "no such directory"), (empty, "bench.json: not found"),
                          (corrupt, "unreadable results file"), (not_object, "malformed grid"),
                          (run, "bench.json: not found"), (run / "metrics.json", "not a directory")):
        code, out, err = run_medvtab("report", path)
        assert code == 2, (path, err)
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
        with pytest.raises(MedvtabError):
            load_bench(path)


def test_a_corrupt_run_metrics_is_a_failed_run_not_an_abort(run_medvtab, tmp_path):
    """A torn metrics.json is not a result: the report lists the run as failed and renders (issue 20, item 7)."""
    spec = RunSpec(task="breastmnist", method="linear")
    write_grid(tmp_path, "broken", [spec])
    d = run_dir(tmp_path, spec)
    d.mkdir(parents=True)
    (d / "metrics.json").write_text('{"accuracy": 0.5')
    (d / "config.json").write_text("{}")
    bench = load_bench(tmp_path)
    assert not bench.runs[0].finished and "unreadable" in bench.failures[spec.run_id()]["error"]
    code, _, err = run_medvtab("report", tmp_path, "--no-attention")
    assert code == 0, err
    assert "unreadable" in (tmp_path / "report.md").read_text()
