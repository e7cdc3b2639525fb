"""The training loop's pieces from Python, without the CLI: the schedule's values, the training state's
capture / restore / save / load round trip, and fit on a tiny real task (one epoch; the method's default
learning rate; stopped after a checkpoint and resumed to the uninterrupted result)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medvtab.backbones import load_backbone
from medvtab.data import load_task
from medvtab.engine.batches import BatchSizes
from medvtab.engine.loop import TrainConfig, adamw, fit
from medvtab.engine.schedule import warmup_cosine, warmup_steps
from medvtab.engine.state import CHECKPOINT_FORMAT, TrainState, load_checkpoint
from medvtab.errors import MedvtabError
from medvtab.methods import build_model, get_method, make_config


@pytest.fixture(scope="module")
def data(small_task):
    return load_task(str(small_task))


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tiny-general")


def build(method, backbone, classes=2):
    torch.manual_seed(0)
    return build_model(method, make_config(method, {}), backbone, None, classes)


# --- the schedule ----------------------------------------------------------------------------------------------

def test_schedule_equals_each_callers_closed_form():
    """The loop's (warm-up a tenth, at most an epoch, to zero), pre-training's (5 %, to zero) and MedVQA's (5 %,
    to a tenth) schedules, float for float."""
    for total in (1, 7, 40, 100, 333, 1000):
        loop_warmup, short_warmup = max(1, min(8, total // 10)), max(1, int(0.05 * total))
        for step in range(total):
            def cosine(warm):
                return math.cos(math.pi * (step - warm) / max(1, total - warm))
            loop = (step + 1) / loop_warmup if step < loop_warmup else 0.5 * (1 + cosine(loop_warmup))
            pre = 3e-4 * (step + 1) / short_warmup if step < short_warmup else 0.5 * 3e-4 * (1 + cosine(short_warmup))
            progress = (step - short_warmup) / max(1, total - short_warmup)
            vqa = 2e-3 * (step + 1) / short_warmup if step < short_warmup else 2e-3 * (
                0.1 + 0.45 * (1 + math.cos(math.pi * progress)))
            assert warmup_cosine(step, total, loop_warmup) == loop
            assert warmup_steps(total, 0.05) == short_warmup
            assert warmup_cosine(step, total, short_warmup, 3e-4) == pre
            assert warmup_cosine(step, total, short_warmup, 2e-3, floor=0.1, fraction_first=True) == vqa


def test_schedule_warms_up_then_decays_to_its_floor():
    lrs = [warmup_cosine(s, 100, 5, 1.0, floor=0.1) for s in range(100)]
    assert lrs[0] == 0.2 and lrs[4] == 1.0 and lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert warmup_cosine(100, 100, 5) == 0.0


# --- the training state ----------------------------------------------------------------------------------------

def make_state(model, **kwargs) -> TrainState:
    optimizer = adamw(model, TrainConfig(lr=1e-2))
    return TrainState(model, optimizer, torch.Generator().manual_seed(3), BatchSizes(16, 32), epochs=4,
                      train_images=40, fingerprint={"task": "t"}, **kwargs)


def train_steps(state: TrainState, n: int) -> None:
    state.model.eval()  # no dropout: the global random stream is the same object for every state here
    for _ in range(n):
        x = torch.randint(0, 256, (4, 1, 28, 28), generator=state.generator, dtype=torch.uint8)
        loss = state.model(x).logsumexp(-1).mean()
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.step += 1


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_state_capture_save_load_restore_round_trip(backbone, tmp_path):
    state = make_state(build("vpt-shallow", backbone))
    train_steps(state, 3)
    state.end_epoch(1, 0.75, patience=2, val_probs=np.full((4, 2), 0.5))
    state.history.append({"epoch": 1, "val_accuracy": 0.75})
    state.batches.train, state.batches.reductions = 8, [{"epoch": 1, "phase": "train", "from": 16, "to": 8}]
    state.reschedule()  # as --auto-batch does: the schedule of the smaller batch size
    state.skipped_batches, state.elapsed = 1, 2.5
    state.save(tmp_path / "checkpoint.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temp file left
    saved = load_checkpoint(tmp_path / "checkpoint.pt")  # torch.load(weights_only=True)
    assert saved["format"] == CHECKPOINT_FORMAT and saved["epoch"] == 1 and saved["step"] == 3
    assert_same(saved, state.capture())

    other = make_state(build("vpt-shallow", backbone))  # fresh weights, optimizer and generator
    other.restore(saved)
    assert_same(other.capture(), state.capture())
    assert other.scheduler.get_last_lr() == state.scheduler.get_last_lr()
    assert (other.batches.train, other.best_epoch, other.stale) == (8, 1, 0)
    train_steps(state, 2)  # both go on alike: same batches, same updates
    train_steps(other, 2)
    assert_same(other.capture(), state.capture())


def test_restore_goes_back_to_a_snapshot_and_keeps_the_smaller_eval_batch(backbone):
    state = make_state(build("vpt-shallow", backbone))
    snapshot = state.capture()
    train_steps(state, 2)
    state.batches.eval = 8
    state.restore(snapshot)
    assert_same(state.capture(), {**snapshot, "eval_batch_size": 8})


def test_restore_refuses_a_state_of_another_run(backbone):
    state = make_state(build("linear", backbone))
    saved = {**state.capture(), "fingerprint": {"task": "other"}}
    with pytest.raises(MedvtabError, match=r"different run \(differs in: task\)"):
        state.restore(saved)


def test_load_checkpoint_refuses_other_formats(tmp_path):
    torch.save({"format": CHECKPOINT_FORMAT - 1}, tmp_path / "old.pt")
    with pytest.raises(MedvtabError, match="not a medvtab training checkpoint"):
        load_checkpoint(tmp_path / "old.pt")


# --- fit ---------------------------------------------------------------------------------------------------------

def test_one_epoch_of_fit(data, backbone):
    model = build("vpt-shallow", backbone)
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    steps = []
    result = fit(model, data.train, data.val, TrainConfig(epochs=1, batch_size=16, lr=1e-2),
                 on_step=lambda step, total, loss: steps.append((step, total)), on_note=pytest.fail)
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 64 images, batches of 16
    (row,) = result.history
    assert list(row) == ["epoch", "train_loss", "val_loss", "val_accuracy", "lr", "seconds"]
    assert row["epoch"] == 1 and 0 <= row["val_accuracy"] <= 1 and math.isfinite(row["train_loss"])
    assert result.best_epoch == 1 and result.skipped_batches == 0 and result.batches.train == 16
    assert any(not torch.equal(before[k], v) for k, v in model.trainable_state_dict().items())


def test_fit_without_a_learning_rate_trains_at_the_methods_default(data, backbone):
    model = build("linear", backbone)
    result = fit(model, data.train, data.val, TrainConfig(epochs=1), on_note=pytest.fail)
    # one epoch of one batch (64 images at the default batch size): after its one warm-up step, the peak
    assert result.history[0]["lr"] == get_method("linear").default_lr
    other = build("linear", backbone)
    other.default_lr = None  # a model not built by build_model
    with pytest.raises(MedvtabError, match="TrainConfig.lr: None"):
        fit(other, data.train, data.val, TrainConfig(epochs=1))


class Stop(Exception):
    pass


def test_fit_stopped_after_a_checkpoint_resumes_to_the_uninterrupted_result(data, backbone, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-2, seed=1)
    whole = build("vpt-shallow", backbone)
    expected = fit(whole, data.train, data.val, cfg, checkpoint=tmp_path / "whole.pt", on_note=pytest.fail)

    def stop_in_epoch_2(row):  # called before the epoch's checkpoint: the file holds epoch 1
        if row["epoch"] == 2:
            raise Stop
    stopped = build("vpt-shallow", backbone)
    with pytest.raises(Stop):
        fit(stopped, data.train, data.val, cfg, on_epoch=stop_in_epoch_2, checkpoint=tmp_path / "run.pt",
            fingerprint={"run": 1})
    saved = load_checkpoint(tmp_path / "run.pt")
    assert saved["epoch"] == 1 and len(saved["history"]) == 1

    torch.manual_seed(123)  # whatever the process did in between: the checkpoint holds the random state
    resumed = build("vpt-shallow", backbone)
    got = fit(resumed, data.train, data.val, cfg, checkpoint=tmp_path / "run.pt", resume=saved,
              fingerprint={"run": 1})
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in expected.history]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in got.history] == strip
    assert got.best_epoch == expected.best_epoch
    assert_same(resumed.trainable_state_dict(), whole.trainable_state_dict())
    assert load_checkpoint(tmp_path / "run.pt")["epoch"] == 3


def test_on_epoch_returning_true_stops_after_that_epoch(data, backbone):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=1e-2, seed=1)
    result = fit(build("vpt-shallow", backbone), data.train, data.val, cfg, on_epoch=lambda row: row["epoch"] == 1,
                 on_note=pytest.fail)
    assert len(result.history) == 1 and result.stopped_at_epoch == 1
    assert fit(build("vpt-shallow", backbone), data.train, data.val, cfg, on_note=pytest.fail).stopped_at_epoch is None
