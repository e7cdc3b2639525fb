"""What sections ``train_step`` and ``linear_probe`` rely on: gradient checkpointing changes no gradient, and the
linear probe computes backbone features in its first epoch only."""
from __future__ import annotations

import torch

from medvtab.perf.context import Compiler, Context, PerfConfig
from medvtab.perf.training import measure_linear


def test_gradient_checkpointing_gives_the_same_gradients(trained_dynamer, images):
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    grads = []
    for on in (False, True):
        model = trained_dynamer(keep_ratio=0.5, skip_mode="later-blocks").train()
        for b in (model.runner.general, model.runner.medical):
            b.grad_checkpointing = on
        try:
            torch.nn.functional.cross_entropy(model(images), labels).backward()
        finally:
            for b in (model.runner.general, model.runner.medical):
                b.grad_checkpointing = False
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_linear_probe_computes_backbone_features_in_the_first_epoch_only(pair):
    cfg = PerfConfig.for_profile("cpu", quick=True, linear_epochs=3)
    general, medical = pair
    calls = []
    handle = general.model.patch_embed.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        result = measure_linear(Context(cfg, torch.device("cpu"), general, medical, 28, Compiler(False)))
    finally:
        handle.remove()
    assert len(result["epoch_seconds"]) == 3 and result["speedup"] > 0
    # every train and validation image went through the backbone exactly once, all in the first epoch
    assert sum(calls) == result["train_images"] + result["val_images"]
