"""``medvtab train`` and ``medvtab predict`` as a user runs them, and one-line errors for bad input.

Happy paths run ``python -m medvtab.cli`` as real subprocesses. The error cases run through a small driver
process that imports the CLI once and forks one child per case: each child is still its own process that
calls ``medvtab.cli.main()`` (exactly what ``python -m medvtab.cli`` runs) with its own argv, exit status,
stdout and stderr, but the ~8 s import of torch/timm/sklearn is paid once instead of once per case.

Every process runs torch on one thread (OMP_NUM_THREADS=1), and so do the in-process checks here: on a small
shared machine two-thread OpenMP is several times slower as soon as another process competes for a core, and
the processes started in the background (the error-case driver, the ImageFolder run) overlap with the main
training run.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from medvtab.data.loading import bundled_path

TRAIN_ARGS = ["--train-size", "64", "--epochs", "1", "--batch-size", "32"]
RUN_FILES = ["adapter.safetensors", "config.json", "log.csv", "metrics.json", "predictions.npz", "splits.json"]
TIMEOUT = 300
# Rich wraps long lines at COLUMNS when stderr is not a terminal; fix the width so wrapping shows up.
ENV = {**os.environ, "COLUMNS": "80", "OMP_NUM_THREADS": "1"}


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "medvtab.cli", *map(str, args)]


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), capture_output=True, text=True, env=ENV, timeout=TIMEOUT)


def start(command: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, **kwargs)


def finish(proc: subprocess.Popen, stdin: str | None = None) -> subprocess.CompletedProcess:
    stdout, stderr = proc.communicate(stdin, timeout=TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def save_png(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="session")
def bundled() -> dict[str, np.ndarray]:
    with np.load(bundled_path("pneumoniamnist")) as npz:
        return {k: npz[k] for k in npz.files}


def first_of_each_class(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ``n`` images of class 0 and of class 1."""
    labels = labels.reshape(-1)
    return np.concatenate([np.flatnonzero(labels == c)[:n] for c in (0, 1)])


# --- train -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def trained(tmp_path_factory, driver, image_folder_run):
    """One tiny training run on the bundled task, shared by every test that needs a run directory.
    (The driver and the ImageFolder run are requested only to start them now, overlapping with this one.)"""
    out = tmp_path_factory.mktemp("train") / "run"
    proc = run_cli("train", "--task", "pneumoniamnist", "--out", out, *TRAIN_ARGS)
    assert proc.returncode == 0, proc.stderr
    return SimpleNamespace(dir=out, proc=proc, metrics=json.loads((out / "metrics.json").read_text()),
                           config=json.loads((out / "config.json").read_text()))


def test_train_writes_exactly_the_run_files(trained):
    assert sorted(os.listdir(trained.dir)) == RUN_FILES
    assert os.listdir(trained.dir.parent) == ["run"]  # no .partial stage or temp file left beside it


def test_train_metrics_fields(trained):
    m = trained.metrics
    required = {"task", "method", "seed", "accuracy", "balanced_accuracy", "macro_f1", "auroc",
                "trainable_params", "frozen_params", "params_ratio", "eval_images_per_second", "ms_per_batch",
                "train_seconds", "routing"}
    assert required <= set(m)
    assert (m["task"], m["method"], m["seed"]) == ("pneumoniamnist", "dynamer", 0)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "auroc"):
        assert 0.0 <= m[key] <= 1.0, key
    for key in ("eval_images_per_second", "ms_per_batch", "train_seconds"):
        assert m[key] > 0, key
    assert m["split_sizes"] == {"train": 64, "val": 524, "test": 624}
    assert m["epochs_run"] == 1


def test_train_params_ratio_matches_own_count(trained):
    from medvtab.backbones import load_backbone
    from medvtab.methods import build_model, make_config

    general, medical = load_backbone("tiny-general"), load_backbone("tiny-medical")
    one = sum(p.numel() for p in general.parameters())
    both = one + sum(p.numel() for p in medical.parameters())
    model = build_model("dynamer", make_config("dynamer", {}), general, medical, num_classes=2)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # and the run saved exactly the trainable parameters as adapter weights
    saved = sum(t.numel() for t in load_file(str(trained.dir / "adapter.safetensors")).values())
    m = trained.metrics
    assert m["trainable_params"] == trainable == saved > 0
    assert m["frozen_params"] == both
    assert m["params_ratio"] == pytest.approx((one + trainable) / one, abs=5e-5)


def test_train_routing_stats(trained):
    routing = trained.metrics["routing"]
    assert sorted(routing, key=int) == ["0", "1", "2", "3"]  # every block of the 4-block tiny ViTs
    for layer, streams in routing.items():
        assert set(streams) == {"general", "medical"}
        for name, s in streams.items():
            usage = s["expert_usage"]
            assert len(usage) == 4 and all(u >= 0 for u in usage), (layer, name)
            assert sum(usage) == pytest.approx(1.0, abs=1e-3), (layer, name)
            assert 0.0 < s["mean_gate"] < 1.0, (layer, name)
            assert s["kept_fraction"] == 1.0, (layer, name)  # default keep_ratio routes every token


def test_train_stdout_summary_and_stderr_notes(trained):
    summary = json.loads(trained.proc.stdout)
    assert summary["accuracy"] == trained.metrics["accuracy"]
    assert summary["params_ratio"] == trained.metrics["params_ratio"]
    lines = trained.proc.stderr.splitlines()
    # stderr is a pipe here, as under a scheduler or nohup: no progress bar, one plain line per epoch
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 1 and re.fullmatch(r"epoch 1/1: train loss \d\.\d{4}, val loss \d\.\d{4}, val accuracy "
                                             r"\d\.\d{4}, \d+\.\d s", epochs[0]), epochs
    lines = [line for line in lines if line not in epochs]
    assert lines and all(line.startswith(("note: ", "warning: ")) for line in lines), lines  # one per line, unwrapped
    assert not any("randomly initialised" in line for line in lines)  # the tiny pair ships pre-trained
    assert any("subsampled to 64" in line for line in lines)


def test_train_config_and_log(trained):
    c = trained.config
    assert (c["method"], c["general"], c["medical"]) == ("dynamer", "tiny-general", "tiny-medical")
    assert c["num_classes"] == 2 and c["class_names"] == ["normal", "pneumonia"]  # the registry's names
    assert c["train"]["seed"] == 0 and c["train"]["epochs"] == 1 and c["train_size"] == 64
    log = (trained.dir / "log.csv").read_text().splitlines()
    assert log[0] == "epoch,train_loss,val_loss,val_accuracy,lr,seconds"
    assert len(log) == 2 and log[1].startswith("1,")


# --- predict -------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def two_test_images(bundled, tmp_path_factory):
    """One test image of each class, as PNG files, with the pixels they were written from."""
    d = tmp_path_factory.mktemp("images")
    idx = first_of_each_class(bundled["test_labels"], 1)
    pixels = bundled["test_images"][idx]
    paths = [save_png(p, d / f"test_{i}.png") for i, p in zip(idx, pixels)]
    return paths, pixels


def model_probs(model, pixels: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N, classes) probabilities from a loaded run."""
    x = torch.from_numpy(pixels).unsqueeze(1)
    with torch.inference_mode():
        return model(x).float().softmax(-1).numpy()


def test_predict_prints_one_json_line_per_image(trained, two_test_images):
    from medvtab.engine.run import load_run

    paths, pixels = two_test_images
    proc = run_cli("predict", "--run", trained.dir, *paths)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 2
    model, _, class_names = load_run(trained.dir)
    expected = model_probs(model, pixels)
    for line, path, want in zip(lines, paths, expected):
        row = json.loads(line)
        assert row["image"] == str(path)
        assert list(row["probabilities"]) == class_names == ["normal", "pneumonia"]
        got = np.array([row["probabilities"][c] for c in class_names])
        assert got.sum() == pytest.approx(1.0, abs=1e-5)
        assert row["prediction"] == class_names[int(want.argmax())]
        # printed (rounded to 6 places) from the file == computed in-process from the same pixels
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_load_run_round_trip(trained, bundled):
    from medvtab.engine.evaluate import evaluate
    from medvtab.engine.metrics import classification_metrics
    from medvtab.engine.run import load_run

    a, _, _ = load_run(trained.dir)
    b, _, _ = load_run(trained.dir)
    x = torch.from_numpy(bundled["test_images"][:16]).unsqueeze(1)
    with torch.inference_mode():
        assert torch.equal(a(x), b(x))
    # the reloaded weights reproduce the test metrics the run reported
    labels = bundled["test_labels"].reshape(-1).astype(np.int64)
    images = bundled["test_images"][..., None]
    result = evaluate(a, images, labels, trained.metrics["eval_batch_size"], torch.device("cpu"))
    got = classification_metrics(labels, result.probs)
    assert got["accuracy"] == trained.metrics["accuracy"]
    assert got["auroc"] == pytest.approx(trained.metrics["auroc"], abs=1e-9)


# --- ImageFolder ---------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def image_folder_run(bundled, tmp_path_factory):
    """``root/CLASS/*.png``: 12 real training images of each class; trained in the background."""
    base = tmp_path_factory.mktemp("folder")
    root, out = base / "xrays", base / "run"
    names = {0: "normal", 1: "pneumonia"}
    labels = bundled["train_labels"].reshape(-1)
    for i in first_of_each_class(labels, 12):
        save_png(bundled["train_images"][i], root / names[int(labels[i])] / f"{i}.png")
    proc = start(cli_command("train", "--task", root, "--out", out, "--epochs", "1", "--batch-size", "32"))
    yield SimpleNamespace(root=root, out=out, proc=proc)
    stop(proc)


def test_train_on_image_folder(image_folder_run):
    root, out = image_folder_run.root, image_folder_run.out
    proc = finish(image_folder_run.proc)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == RUN_FILES
    config = json.loads((out / "config.json").read_text())
    assert config["class_names"] == ["normal", "pneumonia"]
    assert config["num_classes"] == 2 and config["task_source"] == str(root)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "xrays"
    assert sum(metrics["split_sizes"].values()) == 24 and min(metrics["split_sizes"].values()) > 0


# --- bad input -----------------------------------------------------------------------------------------

DRIVER = r'''
import json, os, sys
import medvtab.cli
import medvtab.engine.run  # noqa: F401  (import the heavy modules once, before forking)


def child(case):
    code = 1
    try:
        os.chdir(case["cwd"])
        for fd, path in ((1, case["stdout"]), (2, case["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["medvtab", *case["argv"]]
        try:
            medvtab.cli.main()
            code = 0
        except SystemExit as err:  # as the interpreter treats it
            code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
            if not isinstance(err.code, (int, type(None))):
                print(err.code, file=sys.stderr)
        except BaseException:
            sys.excepthook(*sys.exc_info())
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


cases = json.load(sys.stdin)  # the parent sends the cases once they exist; the imports are done by then
status, running, todo = {}, {}, list(cases)
while todo or running:
    while todo and len(running) < 2:  # one case per core (torch runs single-threaded here)
        name = todo.pop(0)
        pid = os.fork()
        if pid == 0:
            child(cases[name])
        running[pid] = name
    pid, wait_status = os.wait()
    status[running.pop(pid)] = os.waitstatus_to_exitcode(wait_status)
print(json.dumps(status))
'''


@pytest.fixture(scope="session")
def driver():
    proc = start([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE)
    yield proc
    stop(proc)


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def small_splits(bundled, n=8) -> dict[str, np.ndarray]:
    """A few real images of each class per split, labels (N,) uint8."""
    out = {}
    for split in ("train", "val", "test"):
        idx = first_of_each_class(bundled[f"{split}_labels"], n // 2)
        out[f"{split}_images"] = bundled[f"{split}_images"][idx]
        out[f"{split}_labels"] = bundled[f"{split}_labels"].reshape(-1)[idx]
    return out


@pytest.fixture(scope="session")
def bad_input(bundled, trained, driver, tmp_path_factory):
    """Every bad-input case, run once; name -> namespace(status, stdout, stderr, dir, words)."""
    base = tmp_path_factory.mktemp("bad")
    inputs = base / "inputs"
    inputs.mkdir()
    good = small_splits(bundled)

    (inputs / "corrupt.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    # (images + labels without split keys is the pooled layout, so use keys of neither layout)
    wrong_keys = write_npz(inputs / "wrong_keys.npz", x=good["train_images"], y=good["train_labels"])
    bad_shape = write_npz(inputs / "bad_shape.npz", **{
        **good, "train_images": np.repeat(good["train_images"][..., None], 2, axis=-1)})  # 2 channels
    test_labels = good["test_labels"].copy()
    test_labels[0] = 5
    label_range = write_npz(inputs / "label_range.npz", **{**good, "test_labels": test_labels})
    float_labels = write_npz(inputs / "float_labels.npz", **{
        **good, "train_labels": good["train_labels"].astype(np.float32)})
    (inputs / "x.png").write_text("this is not an image\n")
    no_config = inputs / "not_a_run"
    no_config.mkdir()
    folder = inputs / "folder"
    for i, (image, label) in enumerate(zip(good["train_images"], good["train_labels"])):
        save_png(image, folder / f"class{label}" / f"{i}.png")
    png = (folder / "class1" / "7.png").read_bytes()
    (folder / "class1" / "bad.png").write_bytes(png[: len(png) // 2])  # truncated mid-stream

    task = ["--task", "pneumoniamnist"]
    cases = {  # name: (argv, words the message must contain)
        "unknown_method": ([*task, "--method", "nope"], ["nope", "method"]),
        "unknown_backbone": ([*task, "--general", "vit-nonsense"], ["vit-nonsense", "backbone"]),
        "missing_checkpoint": ([*task, "--general", "dinov2-vitb14@/nonexistent.safetensors"],
                               ["/nonexistent.safetensors"]),
        "corrupt_checkpoint": ([*task, "--general", "dinov2-vitb14@corrupt.safetensors"],
                               ["corrupt.safetensors", "checkpoint"]),
        "npz_wrong_keys": (["--task", wrong_keys], [str(wrong_keys), "train_images"]),
        "npz_bad_shape": (["--task", bad_shape], [str(bad_shape), "train_images", "shape"]),
        "npz_label_out_of_range": (["--task", label_range], [str(label_range), "test_labels", "label 5"]),
        "npz_float_labels": (["--task", float_labels], [str(float_labels), "train_labels", "integer"]),
        "missing_task": (["--task", inputs / "absent.npz"], [str(inputs / "absent.npz")]),
        "out_not_empty": ([*task], [str(base / "out_not_empty" / "run"), "not empty"]),
        "keep_ratio_zero": ([*task, "--keep-ratio", "0"], ["keep_ratio"]),
        "keep_ratio_above_one": ([*task, "--keep-ratio", "1.5"], ["keep_ratio"]),
        "skip_mode": ([*task, "--skip-mode", "sideways"], ["skip_mode"]),
        "unknown_method_option": ([*task, "--set", "nonsense_field=3"], ["nonsense_field"]),
        "image_folder_corrupt": (["--task", folder], [str(folder / "class1" / "bad.png")]),
        "predict_unreadable_image": (["predict", "--run", trained.dir, inputs / "x.png"],
                                     [str(inputs / "x.png")]),
        "predict_no_config": (["predict", "--run", no_config, folder / "class0" / "0.png"],
                              [str(no_config / "config.json")]),
    }
    driver_cases, results = {}, {}
    for name, (argv, words) in cases.items():
        case_dir = base / name  # a train case writes only here: --out is case_dir/run
        case_dir.mkdir()
        if argv[0] != "predict":
            argv = ["train", *argv, "--out", case_dir / "run", *TRAIN_ARGS]
        driver_cases[name] = {"argv": [str(a) for a in argv], "cwd": str(inputs),
                              "stdout": str(base / f"{name}.stdout"), "stderr": str(base / f"{name}.stderr")}
        results[name] = SimpleNamespace(dir=case_dir, words=words)
    occupied = base / "out_not_empty" / "run"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("precious\n")
    results["out_not_empty"].before = snapshot(occupied)
    before = snapshot(inputs)

    proc = finish(driver, json.dumps(driver_cases))
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    for name, r in results.items():
        r.status = status[name]
        r.stdout = Path(driver_cases[name]["stdout"]).read_text()
        r.stderr = Path(driver_cases[name]["stderr"]).read_text()
    assert snapshot(inputs) == before  # no case touched its inputs
    return results


BAD_CASES = ["unknown_method", "unknown_backbone", "missing_checkpoint", "corrupt_checkpoint", "npz_wrong_keys",
             "npz_bad_shape", "npz_label_out_of_range", "npz_float_labels", "missing_task", "out_not_empty",
             "keep_ratio_zero", "keep_ratio_above_one", "skip_mode", "unknown_method_option",
             "image_folder_corrupt", "predict_unreadable_image", "predict_no_config"]


@pytest.mark.parametrize("name", BAD_CASES)
def test_bad_input_is_one_line_error(bad_input, name):
    r = bad_input[name]
    assert "Traceback" not in r.stderr, r.stderr
    assert r.status == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for word in r.words:
        assert word in lines[0], (word, lines[0])
    assert r.stdout == ""
    if name == "out_not_empty":
        assert os.listdir(r.dir) == ["run"]
        assert snapshot(r.dir / "run") == r.before  # same file, same bytes, same mtime
    else:
        assert os.listdir(r.dir) == []  # no run directory, no .partial stage


def test_bad_input_cases_all_listed(bad_input):
    assert sorted(bad_input) == sorted(BAD_CASES)
