"""``medvtab vqa``: the stages and the evaluation from the command line, the pipeline from a config file, user
errors as one line with exit status 2, and (slow) the full ``pipeline --quick`` against its acceptance bar."""
import json
import os
import time

import pytest
import torch
import yaml


SMALL = ["--num-queries", "4", "--epochs", "1", "--limit", "12"]


pytestmark = pytest.mark.usefixtures("shared_vqa_data")


def test_stages_then_eval(run_medvtab, tmp_path):
    code, out, err = run_medvtab("vqa", "train", "--stage", "caption", "--data", "medpix",
                                 "--out", tmp_path / "caption", "--vocab-data", "slake", "--vocab-data", "vqa-rad",
                                 *SMALL)
    assert code == 0, err
    assert json.loads(out)["stage"] == "caption"
    for stage, data, init in (("vqa", "slake", "caption"), ("finetune", "vqa-rad", "vqa")):
        code, out, err = run_medvtab("vqa", "train", "--stage", stage, "--data", data,
                                     "--init", tmp_path / init, "--out", tmp_path / stage, *SMALL)
        assert code == 0, err
        assert json.loads(out)["init"] == str((tmp_path / init).resolve())
    code, out, err = run_medvtab("vqa", "eval", "--run", tmp_path / "finetune", "--data",
                                 "vqa-rad", "--split", "test", "--limit", "16")
    assert code == 0, err
    assert out.startswith("vqa-rad test closed/open/overall: model ") and out.count("\n") == 1
    assert all(w in out for w in ("(restricted ", "shuffled image", "image-blind", "majority"))
    metrics = json.loads((tmp_path / "finetune" / "metrics.json").read_text())
    assert metrics["decoding"] == "free generation (greedy)"
    assert set(metrics["baselines"]) == {"majority", "image_blind", "shuffled_image"}
    assert len((tmp_path / "finetune" / "answers.jsonl").read_text().splitlines()) == 16


def test_pipeline_from_a_config_file(run_medvtab, tmp_path):
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump({
        "options": {"num_queries": 4, "qformer_hidden": 32, "qformer_layers": 1, "qformer_heads": 2, "limit": 12},
        "caption": {"epochs": 1}, "vqa": {"epochs": 1},
        "targets": [{"data": "vqa-rad", "epochs": 1, "limit": 40}, {"data": "slake", "epochs": 1, "limit": 40}]}))
    code, out, err = run_medvtab("vqa", "pipeline", "--config", config, "--out", tmp_path / "p")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["caption", "finetune-slake", "finetune-vqa-rad",
                                                                  "metrics.json", "summary.md", "vqa"]
    assert "pmc-oa (the paper's set) not found" in err and "in its place: slake:train+slake:val+vqa-rad:train" in err
    summary = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert list(summary["targets"]) == ["vqa-rad", "slake"]
    for name, paper in (("vqa-rad", 0.732), ("slake", 0.875)):
        m = summary["targets"][name]
        assert m["n"] == 40 and m["paper"] == {"overall_accuracy": paper} and len(m["lineage"]) == 3
        assert m == json.loads((tmp_path / "p" / f"finetune-{name}" / "metrics.json").read_text())
        assert {"majority", "image_blind", "shuffled_image"} == set(m["baselines"])
    stages = {s["name"]: s for s in summary["protocol"]}
    assert stages["vqa"]["substitute_for"] == "pmc-vqa" and stages["caption"]["substitute_for"] == "pmc-oa"
    assert stages["finetune-vqa-rad"]["held_out"] == ["slake:test"]
    assert stages["finetune-vqa-rad"]["own_test_images_in_train"] > 0
    assert stages["finetune-slake"]["own_test_images_in_train"] == 0
    assert out == (tmp_path / "p" / "summary.md").read_text()
    assert "| fused model, free generation |" in out and "| shuffled-image control |" in out
    assert "| slake question type |" in out and "| Modality |" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_line(run_medvtab, tmp_path):
    for args in (["train", "--stage", "finetune", "--data", "vqa-rad", "--out", tmp_path / "x"],
                 ["eval", "--run", tmp_path / "x"]):
        code, out, err = run_medvtab("vqa", *args, "--device", "cuda")
        assert code == 2 and err == "error: option '--device': cuda requested but no CUDA device is available\n"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("args, message", [
    (["vqa", "train", "--stage", "pretrain", "--data", "vqa-rad", "--out", "{tmp}/x"], "option '--stage'"),
    (["vqa", "train", "--stage", "finetune", "--data", "vqa-rad", "--lm", "gpt2", "--out", "{tmp}/x"],
     "unknown language model spec 'gpt2'"),
    (["vqa", "train", "--stage", "finetune", "--data", "vqa-rad", "--lm", "hf:{tmp}", "--out", "{tmp}/x"],
     "not a transformers causal LM"),
    (["vqa", "train", "--stage", "vqa", "--data", "nowhere", "--out", "{tmp}/x"], "unknown set 'nowhere'"),
    (["vqa", "train", "--stage", "finetune", "--data", "vqa-rad", "--init", "{tmp}", "--out", "{tmp}/x"],
     "config.json: not found"),
    (["vqa", "train", "--stage", "finetune", "--data", "vqa-rad", "--vision", "tiny-nothing", "--out", "{tmp}/x",
      "--limit", "2"], "unknown backbone spec 'tiny-nothing'"),
    (["vqa", "train", "--stage", "finetune", "--data", "vqa-rad", "--device", "tpu", "--out", "{tmp}/x"],
     "option '--device': expected cpu, cuda or cuda:N"),
    (["vqa", "eval", "--run", "{tmp}"], "config.json: not found"),
    (["vqa", "pipeline", "--config", "{tmp}/bad.yaml", "--out", "{tmp}/p"], "caption.epochs"),
    (["vqa", "pipeline", "--config", "{tmp}/twice.yaml", "--out", "{tmp}/p"], "distinct target sets"),
    (["vqa", "pipeline", "--config", "{tmp}/extra.yaml", "--out", "{tmp}/p"], "colour: Extra inputs"),
    (["vqa", "pipeline", "--out", "{tmp}/full"], "output directory exists"),
])
def test_user_errors_are_one_line_with_status_2(run_medvtab, tmp_path, args, message):
    (tmp_path / "bad.yaml").write_text("caption: {data: medpix, epochs: 0}\n")
    (tmp_path / "extra.yaml").write_text("colour: blue\n")
    (tmp_path / "twice.yaml").write_text("targets: [{data: slake, epochs: 1}, {data: SLAKE, epochs: 2}]\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("")
    code, out, err = run_medvtab(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "p").exists()


@pytest.mark.slow
def test_quick_pipeline_reports_both_targets_with_baselines_and_the_shuffled_control(run_medvtab, tmp_path):
    """Acceptance: the whole quick pipeline in under 10 minutes, both targets with their baselines; the fused model
    above the majority on closed questions of both."""
    start = time.perf_counter()
    threads = torch.get_num_threads()  # the suite runs single-threaded (conftest); a user's run has torch's default
    try:
        code, out, err = run_medvtab("vqa", "--threads", str(os.cpu_count()), "pipeline", "--quick", "--out",
                                     tmp_path / "quick")
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    assert code == 0, err
    summary = json.loads((tmp_path / "quick" / "metrics.json").read_text())
    print(f"pipeline --quick: {seconds:.0f} s\n{out}")
    assert seconds < 600
    rad, slake = summary["targets"]["vqa-rad"], summary["targets"]["slake"]
    assert (rad["n"], rad["n_closed"], slake["n"], slake["n_closed"]) == (451, 272, 1061, 416)
    for m in (rad, slake):
        assert m["closed_accuracy"] > m["baselines"]["majority"]["closed_accuracy"]
    # the image matters on SLAKE: closed and open above the image-blind model and the shuffled-image control
    for key in ("closed_accuracy", "open_accuracy"):
        assert slake[key] > max(slake["baselines"][b][key] for b in ("image_blind", "shuffled_image")), key
