"""Grids: the built-in suites and YAML files expand to normalised run specs; a bad grid file stops with a one-line
``error:`` naming the key or field, and exit status 2, before anything runs."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from unittest import mock

import pytest

from medvtab.bench.grid import GROUP_ORDER, expand_grid, load_grid_file, parse_grid, unique_runs
from medvtab.bench import store
from medvtab.bench.store import RunSpec
from medvtab.bench.suites import SUITES, SUITES_DIR, build_suite
from medvtab.engine.loop import TrainConfig
from medvtab.errors import MedvtabError
from medvtab.methods import method_names

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``medvtab ARGS`` in this process (the same ``main()`` the console script runs)."""
    from medvtab import cli as cli_module

    with mock.patch.object(sys, "argv", ["medvtab", *map(str, args)]):
        try:
            cli_module.main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_mini_suite_has_every_group_of_the_report():
    specs = expand_grid(build_suite("mini"))
    groups = Counter(s.group for s in specs)
    assert groups == {"main": 42 * 3, "patient-ood": 15 * 3, "fewshot": 12 * 3}  # 3 seeds
    main = [s for s in specs if s.group == "main"]
    assert {s.method for s in main} == set(method_names())
    assert {s.task for s in main} == {"retinamnist", "pneumoniamnist", "breastmnist"}
    ood = [s for s in specs if s.group == "patient-ood"]
    assert {(s.seen, s.unseen) for s in ood} == {(100, 60), (80, 80), (60, 100)}
    assert {s.task for s in ood} == {"kermany-cxr"} and {s.protocol for s in ood} == {"patient-ood"}
    few = [s for s in specs if s.group == "fewshot"]
    assert {s.train_fraction for s in few} == {0.1, 0.3, 1.0} and all(s.train_size is None for s in few)
    assert len(unique_runs(specs)) == len(specs)
    assert {s.seed for s in specs} == {0, 1, 2}
    budget = build_suite("mini").train  # as overrides: the values equal to TrainConfig's defaults dropped
    assert all(s.train == {k: v for k, v in budget.items() if TrainConfig.model_fields[k].default != v}
               for s in specs)


def test_quick_profile_and_seeds_and_methods_filters():
    quick = expand_grid(build_suite("mini", quick=True))
    assert all(s.train["epochs"] == 1 for s in quick) and len(quick) < len(expand_grid(build_suite("mini")))
    assert {s.seed for s in quick} == {0}
    three = expand_grid(build_suite("mini"), seeds=3, methods=["linear", "dynamer"])
    assert {s.method for s in three} == {"linear", "dynamer"} and {s.seed for s in three} == {0, 1, 2}
    assert Counter(s.group for s in three) == {"main": 18, "patient-ood": 18, "fewshot": 18}
    with pytest.raises(MedvtabError, match="option '--methods': unknown method 'nope'"):
        expand_grid(build_suite("mini"), methods=["nope"])


def test_ablation_groups_share_the_default_run():
    specs = expand_grid(build_suite("mini-ablations"))
    assert [g for g in GROUP_ORDER if g.startswith("ablation")] == list(dict.fromkeys(s.group for s in specs))
    assert Counter(s.group for s in specs) == {"ablation-gates": 4, "ablation-gate-dim": 4,
                                               "ablation-gated-layers": 4, "ablation-keep-ratio": 12,
                                               "ablation-adapter-layers": 4}
    default = [s for s in specs if s.options == {}]  # the defaults are normalised away
    assert {s.group for s in default} == {"ablation-gates", "ablation-gate-dim", "ablation-gated-layers",
                                          "ablation-keep-ratio", "ablation-adapter-layers"}
    assert len({s.run_id() for s in default}) == 1
    assert len(unique_runs(specs)) == len(specs) - 4
    keep = [s for s in specs if s.group == "ablation-keep-ratio"]
    assert {(s.options.get("keep_ratio", 1.0), s.options.get("skip_mode", "adapter")) for s in keep} == {
        (r, m) for r in (1.0, 0.5, 0.3, 0.1) for m in ("adapter", "later-blocks", "block")}
    # and it is the main table's DynaMer run on the same task (the budgets agree)
    main = {s.run_id() for s in expand_grid(build_suite("mini"), methods=["dynamer"]) if s.group == "main"}
    assert default[0].run_id() in main


def test_built_in_suites_are_grid_files():
    """What a user copies: each suite's default profile reads as a --config grid file."""
    assert SUITES == ("mini", "mini-ablations", "mini-scaling")
    for name in SUITES:
        assert load_grid_file(Path(str(SUITES_DIR / f"{name}.yaml"))).name == name


def test_shipped_configs():
    mini = expand_grid(build_suite("mini"))
    grid = load_grid_file(CONFIGS / "vitb-grid.example.yaml")
    specs = expand_grid(grid)
    assert grid.device == "cuda" and len(specs) == 23 * 14 * 3
    assert {s.general.split("@")[0] for s in specs} == {"dinov2-vitb14"}
    assert {s.medical.split("@")[0] for s in specs} == {"lvmmed-vitb"}
    lite = expand_grid(load_grid_file(CONFIGS / "mini-dynamer-lite.yaml"))
    main = [s for s in mini if s.group == "main" and s.method == "dynamer"]
    assert [(s.task, s.train, s.train_size) for s in lite] == [(s.task, s.train, s.train_size) for s in main]
    assert {s.run_id() for s in lite}.isdisjoint(s.run_id() for s in main)


def test_normalisation_maps_equal_runs_to_one_run_id():
    a = expand_grid(parse_grid({"tasks": ["breastmnist"], "methods": ["dynamer"],
                                "options": {"dynamer": {"keep_ratio": 1, "gates": "both"}},
                                "train": {"patience": 5, "epochs": 3}}))
    b = expand_grid(parse_grid({"tasks": ["breastmnist"], "methods": ["dynamer"], "train": {"epochs": 3},
                                "protocols": [{"name": "Standard"}]}))
    assert a == b and a[0].options == {} and a[0].train == {"epochs": 3}
    assert a[0].run_id() == RunSpec(task="breastmnist", method="dynamer", train={"epochs": 3}).run_id()


def test_run_id_follows_the_methods_whole_configuration(monkeypatch):
    """Options equal to the defaults name the same run; when a release changes a default, a stored run made under
    the old default is a different run (never reused as the new one)."""
    default = RunSpec(task="breastmnist", method="dynamer")
    before = default.run_id()
    assert RunSpec(task="breastmnist", method="dynamer", options={"gate_dim": "width"}).run_id() == before
    assert RunSpec(task="breastmnist", method="dynamer", options={"gate_dim": "1"}).run_id() != before
    real = store.make_config  # a release whose default gate is one value per token
    monkeypatch.setattr(store, "make_config", lambda name, options: real(name, {"gate_dim": "1", **options}))
    assert default.run_id() != before


def test_groups_inherit_and_merge_top_level_fields():
    grid = parse_grid({
        "tasks": ["breastmnist"], "seeds": [3, 7], "train": {"epochs": 2, "batch_size": 16},
        "options": {"dynamer": {"top_k": 1}},
        "groups": {"a": {"methods": ["dynamer"], "train": {"epochs": 4}, "options": {"dynamer": {"keep_ratio": 0.5}}},
                   "b": {"methods": ["linear", "lora"], "tasks": ["retinamnist"], "seeds": 1,
                         "protocols": [{"name": "fewshot", "shots": [1, 2]}]}}})
    specs = expand_grid(grid)
    a = [s for s in specs if s.group == "a"]
    assert [s.seed for s in a] == [3, 7]
    assert a[0].train == {"epochs": 4, "batch_size": 16}
    assert a[0].options == {"top_k": 1, "keep_ratio": 0.5}
    b = [s for s in specs if s.group == "b"]
    assert {(s.method, s.shots, s.seed, s.task) for s in b} == {
        (m, k, 0, "retinamnist") for m in ("linear", "lora") for k in (1, 2)}


@pytest.mark.parametrize("text, message", [
    ("tasks: [breastmnist]\nmethod: [linear]\n", "unknown key 'method'"),
    ("groups:\n  main:\n    tasks: [breastmnist]\n    epochs: 3\n", "unknown key 'groups.main.epochs'"),
    ("tasks: [breastmnist]\nprotocols: [{name: fewshot, fraction: 0.1}]\n", "unknown key 'protocols.0.fraction'"),
    ("tasks: [breastmnist]\nmethods: [linear, dynamerr]\n", "field 'methods': unknown method 'dynamerr'; expected"),
    ("tasks: [breastmnist]\nprotocols: [{name: fewshot}]\n",
     "field 'protocols': option '--protocol fewshot': give exactly one of --train-fraction and --shots"),
    ("tasks: [breastmnist]\nprotocols: [{name: standard, seen: 10}]\n",
     "field 'protocols': option '--seen': only with --protocol patient-ood"),
    ("tasks: [breastmnist]\nprotocols: [{name: loo}]\n", "unknown protocol 'loo'; choose from standard, vtab1k"),
    ("tasks: [breastmnist]\nmethods: [dynamer]\nsweep: {skip_mode: [adapter, blocks]}\n",
     "method 'dynamer' option 'skip_mode': Input should be 'adapter', 'later-blocks' or 'block'"),
    ("tasks: [breastmnist]\noptions: {dynamer: {keep_ratio: 2}}\n", "option 'keep_ratio'"),
    ("tasks: [breastmnist]\ntrain: {epochs: 0}\n", "field 'train.epochs': Input should be greater than or equal"),
    ("tasks: [breastmnist]\ntrain: {epoch: 3}\n", "unknown key 'train.epoch'; expected any of: epochs"),
    ("tasks: [breastmnist]\ntrain: {device: cuda}\n", "field 'train.device': not a training override"),
    ("tasks: [breastmnist]\nseeds: 0\n", "field 'seeds'"),
    ("tasks: [breastmnist\n", "not valid YAML at line"),
    ("methods: [linear]\n", "field 'tasks': no tasks given"),
    ("tasks: breastmnist\nmethods: linear, nope\n", "field 'methods': unknown method 'nope'"),
    ("- just\n- a list\n", "expected a mapping of grid fields"),
    ("tasks: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),  # safe_load only
])
def test_bad_grid_files_stop_with_one_line(tmp_path, capsys, text, message):
    path = write(tmp_path, text)
    code, out, err = cli(capsys, "bench", "--config", path, "--out", tmp_path / "out", "--dry-run")
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one of --suite"),
    (["--suite", "mini", "--config", "x.yaml"], "give exactly one of --suite"),
    (["--suite", "maxi"], "option '--suite': unknown suite 'maxi'; choose from mini, mini-ablations"),
    (["--config", "grid.yaml", "--quick"], "option '--quick': only with --suite"),
    (["--config", "missing.yaml"], "option '--config': missing.yaml: no such file"),
    (["--suite", "mini", "--methods", "linear,nope"], "option '--methods': unknown method 'nope'"),
    (["--suite", "mini", "--executor", "dask"], "option '--executor': unknown executor 'dask'"),
    (["--suite", "mini", "--executor", "serial", "--workers", "2"],
     "option '--workers': only with --executor local or ray"),
    (["--suite", "mini", "--address", "ray://head:10001"], "option '--address': only with --executor ray"),
    (["--config", "grid.yaml", "--device", "gpu"], "option '--device': unknown device 'gpu'; expected cpu, cuda"),
    (["--suite", "mini-ablations", "--methods", "linear"], "no run of suite 'mini-ablations' uses any of linear"),
])
def test_bad_bench_options_stop_with_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "tasks: [breastmnist]\n")
    code, out, err = cli(capsys, "bench", "--out", tmp_path / "out", *args)
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_groups_and_writes_nothing(tmp_path, capsys):
    code, out, err = cli(capsys, "bench", "--suite", "mini-ablations", "--out", tmp_path / "out", "--dry-run")
    assert code == 0, err
    assert "24 runs, 28 specs" in out
    for group in ("ablation-gates", "ablation-gate-dim", "ablation-gated-layers", "ablation-keep-ratio",
                  "ablation-adapter-layers"):
        assert group in out
    assert out.count("pending") == 24 + 1  # one line per run, plus the column
    assert "keep_ratio=0.1 skip_mode=block" in out
    assert not (tmp_path / "out").exists()


def test_two_suites_into_one_store_share_runs(tmp_path, capsys):
    code, out, err = cli(capsys, "bench", "--suite", "mini,mini-ablations", "--out", tmp_path / "out", "--dry-run")
    assert code == 0, err
    assert "(230 runs, 235 specs)" in out  # 207 + 28 specs; the ablations share 4 + 1 (the main table's DynaMer run)
    assert ("[main, ablation-gates, ablation-gate-dim, ablation-gated-layers, ablation-keep-ratio, "
            "ablation-adapter-layers]") in out


def test_suite_names():
    with pytest.raises(MedvtabError, match="unknown suite"):
        build_suite("nope")
    assert build_suite("mini", quick=True).name == "mini"
