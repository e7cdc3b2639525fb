"""The streaming data path (:mod:`medvtab.engine.data`) on real images: the per-image shift equals the batch formula
the engine used before it streamed, training through it reproduces numbers recorded with that formula, any worker
count gives the same run, a process's share under DDP is its slice of the global batch, no pass reads more than a
batch of the split at a time, and large cached features spill to a memory map with the same results."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import medvtab.engine.data as engine_data
from medvtab.backbones import load_backbone
from medvtab.data import Split, load_task
from medvtab.data.loading import bundled_path
from medvtab.engine.data import EpochBatches, SplitImages, loader, shift_pad
from medvtab.engine.evaluate import evaluate
from medvtab.engine.loop import TrainConfig, fit
from medvtab.methods import build_model, make_config


def reference_random_shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The engine's augmentation before it streamed (commit 3325b0a), kept here as the reference: a whole
    (B, C, H, W) uint8 batch padded in float, offsets drawn for the batch, one crop per image."""
    b, _, h, w = images.shape
    pad = max(1, h // 8)
    padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    return out.round_().to(torch.uint8)


def real_images(name: str, n: int, size: int | None = None) -> np.ndarray:
    """``n`` train images of a bundled set, (N, H, W, C) uint8; ``size``: resized (bicubic) to it."""
    with np.load(bundled_path(name)) as npz:
        images = npz["train_images"][:n]
    images = images[..., None] if images.ndim == 3 else images
    if size is not None:
        images = np.stack([np.asarray(Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im).resize(
            (size, size), Image.Resampling.BICUBIC)).reshape(size, size, -1) for im in images])
    return images


@pytest.mark.parametrize("name,size", [("pneumoniamnist", None), ("retinamnist", None), ("breastmnist", 224)])
def test_per_image_shift_equals_the_batch_formula_on_real_images(name, size):
    images = real_images(name, 12, size)
    dataset = SplitImages(images)
    for seed in range(3):
        expected = reference_random_shift(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                                          torch.Generator().manual_seed(seed))
        batches = EpochBatches(torch.arange(len(images)), len(images), 1, torch.Generator().manual_seed(seed),
                               shift_pad(images.shape[1]))
        (items,) = list(batches)
        got = torch.stack([dataset[item][0] for item in items])
        assert got.dtype == torch.uint8 and torch.equal(got, expected)
    pad = shift_pad(images.shape[1])  # the extremes too: every offset reaches into the reflected border
    corners = torch.stack([dataset[(0, dy, dx)][0] for dy in (0, 2 * pad) for dx in (0, 2 * pad)])
    padded = F.pad(torch.from_numpy(images[:1]).permute(0, 3, 1, 2).float(), (pad,) * 4, mode="reflect")[0]
    h = images.shape[1]
    assert torch.equal(corners, torch.stack([padded[:, dy:dy + h, dx:dx + h].to(torch.uint8)
                                             for dy in (0, 2 * pad) for dx in (0, 2 * pad)]))


def test_each_process_gets_its_slice_of_the_global_batch():
    order = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    whole = list(EpochBatches(order, 16, 3, torch.Generator().manual_seed(2), pad=3))
    shares = [list(EpochBatches(order, 16, 3, torch.Generator().manual_seed(2), pad=3, rank=r, world=3))
              for r in range(3)]
    for step, batch in enumerate(whole):
        assert [batch[r::3] for r in range(3)] == [share[step] for share in shares]
    assert list(EpochBatches(order, 16, 3, torch.Generator(), pad=None, rank=1, world=2))[0] == order[:16].tolist()[1::2]


# Recorded at commit ffb5f34 (today's bundled experts; whole splits as tensors, the batch shift above) by fitting
# each method on the conftest's small_task with TrainConfig(epochs=2, batch_size=12, lr=3e-3, seed=1) after torch.manual_seed(0):
# per epoch (train loss, val loss) as the history rounds them, the sum of the trainable weights, the sum of the
# best validation epoch's class-1 probabilities, and evaluate() on the test split at batch 5 (class-1 probability
# sum, loss). The losses must match exactly (6 digits); the sums to 1e-6 relative, which allows another CPU's
# float rounding but not a different batch, shift or order (those move them in the second or third digit).
RECORDED = {
    "dynamer": ([(0.898829, 0.424727), (0.376124, 0.379512)], -68.43201228824933, 6.731847375631332,
                8.80676668137312, 0.34446293115615845),
    "linear": ([(0.663204, 0.630088), (0.375971, 0.433763)], -0.8538411974732298, 7.265850149095058,
               9.213675513863564, 0.36607494950294495),
}


@pytest.fixture(scope="module")
def small(small_task):
    return load_task(str(small_task))


@pytest.fixture(scope="module")
def tiny_pair():
    return load_backbone("tiny-general"), load_backbone("tiny-medical")


def fit_recorded(method: str, data, pair, num_workers: int):
    torch.manual_seed(0)
    model = build_model(method, make_config(method, {}), *pair, 2)
    result = fit(model, data.train, data.val, TrainConfig(epochs=2, batch_size=12, lr=3e-3, seed=1,
                                                          num_workers=num_workers), on_note=pytest.fail)
    tested = evaluate(model, data.test.images, data.test.y, 5, torch.device("cpu"), num_workers=num_workers)
    return model, result, tested


@pytest.mark.parametrize("method", ["dynamer", "linear"])
def test_training_reproduces_the_numbers_of_the_in_memory_path_with_any_worker_count(method, small, tiny_pair):
    runs = [fit_recorded(method, small, tiny_pair, workers) for workers in (0, 2)]
    losses, weights, val_probs, test_probs, test_loss = RECORDED[method]
    for model, result, tested in runs:
        assert [(h["train_loss"], h["val_loss"]) for h in result.history] == losses
        got = sum(float(v.double().sum()) for v in model.trainable_state_dict().values())
        assert got == pytest.approx(weights, rel=1e-6)
        assert float(result.best_val_probs[:, 1].astype(np.float64).sum()) == pytest.approx(val_probs, rel=1e-6)
        assert float(tested.probs[:, 1].astype(np.float64).sum()) == pytest.approx(test_probs, rel=1e-6)
        assert tested.loss == pytest.approx(test_loss, rel=1e-6)
    (a, ra, ta), (b, rb, tb) = runs  # and the worker count changes nothing, bit for bit
    assert all(torch.equal(v, b.trainable_state_dict()[k]) for k, v in a.trainable_state_dict().items())
    assert np.array_equal(ra.best_val_probs, rb.best_val_probs) and np.array_equal(ta.probs, tb.probs)


class Guarded:
    """A split's images that fail a test when more than ``limit`` are read at once, or the whole is converted."""

    def __init__(self, images: np.ndarray, limit: int):
        self.images, self.limit, self.shape = images, limit, images.shape

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        out = self.images[key]
        if out.ndim == 4 and len(out) > self.limit:
            pytest.fail(f"{len(out)} images read at once (a batch is at most {self.limit})")
        return out

    def __array__(self, *args, **kwargs):
        pytest.fail("the whole split converted to an array")


@pytest.mark.parametrize("method", ["vpt-shallow", "linear"])
def test_no_pass_reads_more_than_a_batch_of_the_split(method, small, tiny_pair):
    guard = [Split(Guarded(s.images, 8), s.labels) for s in (small.train, small.val)]
    torch.manual_seed(0)
    model = build_model(method, make_config(method, {}), tiny_pair[0], None, 2)
    fit(model, *guard, TrainConfig(epochs=1, batch_size=8, eval_batch_size=8, lr=1e-3), on_note=pytest.fail)
    evaluate(model, guard[1].images, guard[1].y, 8, torch.device("cpu"))


def test_prepared_memory_map_streams_like_the_array(small, tmp_path):
    mapped = np.lib.format.open_memmap(tmp_path / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=small.test.images.shape)
    mapped[:] = small.test.images
    mapped.flush()
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")
    from_map = [x for x, _ in loader(mapped, [[3, 1], [(0, 2, 1), 7]], 1, torch.device("cpu"))]
    from_array = [x for x, _ in loader(small.test.images, [[3, 1], [(0, 2, 1), 7]], 0, torch.device("cpu"))]
    assert all(torch.equal(a, b) for a, b in zip(from_map, from_array)) and from_map[0].is_contiguous()


def test_large_cached_features_spill_to_a_memory_map_with_the_same_results(small, tiny_pair, monkeypatch, tmp_path):
    kept = fit_recorded("linear", small, tiny_pair, 0)
    spilled_to = []
    memmap = np.memmap

    def spy(file, **kwargs):
        spilled_to.append(file.name)
        return memmap(file, **kwargs)
    monkeypatch.setattr(engine_data, "FEATURES_IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(engine_data.np, "memmap", spy)
    spilled = fit_recorded("linear", small, tiny_pair, 0)
    assert len(spilled_to) == 2  # train and validation features
    assert all(torch.equal(v, spilled[0].trainable_state_dict()[k])
               for k, v in kept[0].trainable_state_dict().items())
    assert np.array_equal(kept[1].best_val_probs, spilled[1].best_val_probs)
