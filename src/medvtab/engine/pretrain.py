"""Pre-training the tiny experts (``medvtab pretrain``): one small, readable loop.

Objective: supervised classification (cross-entropy with label smoothing 0.1) on the data set's own labels,
with light augmentation (random shifts of up to 1/9 of the side with reflect padding, horizontal flips unless
``--no-flip``: left and right matter in radiology), AdamW
(weight decay on matrices only), linear warm-up then cosine decay to zero, gradient clipping at 1.
Opt-in regularisers for small data sets (off by default, so earlier cards' commands reproduce): MixUp and
CutMix (torchvision.transforms.v2; one of the two per batch when both are on, as DeiT does) and stochastic
depth (timm's ``drop_path_rate``, training only: the saved trunk has the same keys).
Why: on one CPU core supervised training is what fits in about an hour per expert and gives a clearly better
feature extractor than random weights; self-supervised objectives (DINO, MAE) need far longer schedules
before their features pass a linear probe.

The result is the trunk only (timm ``VisionTransformer`` state dict without the classification head) as
``.safetensors``, loadable as ``tiny-general@FILE`` / ``tiny-medical@FILE``, plus a model card next to it
(``FILE.json`` and ``FILE.md``, written last): the run's settings, data, time and machine, and a linear
probe (logistic regression on frozen CLS features, train split -> held-out test split) of the pre-trained
network and of the seeded random-init network of the same shape. Test images byte-identical to a train image
are dropped from the probe's test split (content hash), so the probe never scores an image it trained on.
"""
from __future__ import annotations

import hashlib
import math
import os
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from timm.models.vision_transformer import VisionTransformer

from medvtab.atomic import atomic_write, write_json
from medvtab.backbones import load_backbone, tiny
from medvtab.backbones.vit import ViTBackbone
from medvtab.data.catalogue import get_task
from medvtab.data.leakage import catalogue_name, image_digest
from medvtab.data.loading import read_npz
from medvtab.data.splits import stratified_split
from medvtab.engine.schedule import warmup_cosine, warmup_steps
from medvtab.errors import MedvtabError

SHIFT_FRACTION = 1 / 9  # of the side: 3 px at 28 px, 7 px at 64 px
LABEL_SMOOTHING = 0.1
WEIGHT_DECAY = 0.05
WARMUP_FRACTION = 0.05
OBJECTIVE = ("supervised classification: cross-entropy (label smoothing 0.1) on the data set's own labels, "
             "random shifts up to {shift} px (reflect padding){flips}, AdamW (weight decay 0.05 on "
             "matrices), 5 % linear warm-up then cosine decay to zero, gradient clipping at 1.0")
WHY = ("supervised training on the data set's labels is what fits in about an hour per expert on one CPU core "
       "and gives features that a linear probe separates far better than random weights; self-supervised "
       "objectives (DINO, MAE) need much longer schedules before their features pay off")
# Sources that are not (yet) medvtab tasks; registered tasks take licence and citation from the registry.
KNOWN_SOURCES = {
    "cifar10": {"title": "CIFAR-10 (general-domain photographs, 10 classes)",
                "licence": "research use with citation",
                "citation": "Krizhevsky, Learning Multiple Layers of Features from Tiny Images, tech. report, "
                            "University of Toronto, 2009",
                "download": "https://www.cs.toronto.edu/~kriz/cifar.html"},
    "radiology": {"title": "radiology for MedVQA: Kermany paediatric chest X-rays, SLAKE training images and VQA-RAD "
                           "images of no test question, 64 px (built by `medvtab vqa radiology-data`)",
                  "licence": "CC BY 4.0 (Kermany, SLAKE), CC0 1.0 (VQA-RAD)",
                  "citation": "Kermany et al., Cell 2018; Liu et al., SLAKE, ISBI 2021; Lau et al., VQA-RAD, "
                              "Scientific Data 2018",
                  "download": "https://data.mendeley.com/datasets/rscbjbr9sj, https://www.med-vqa.com/slake, "
                              "https://osf.io/89kps"},
}


# --- data -------------------------------------------------------------------------------------------------

def load_npz(path: Path, seed: int) -> dict:
    """Train and test splits of a MedMNIST-style ``.npz``, read by :func:`medvtab.data.loading.read_npz` (a
    missing test split: 20 % of train, stratified; a validation split is not used)."""
    path = Path(path)
    if not path.is_file():
        raise MedvtabError(f"{path}: no such file")
    parts = read_npz(path)
    if "train" not in parts:
        raise MedvtabError(f"{path}: expected keys 'train_images' and 'train_labels' (optional 'test_images' "
                           f"and 'test_labels'), found a pooled 'images' and 'labels'")
    if any(parts[name].targets is not None for name in ("train", "test") if name in parts):
        raise MedvtabError(f"{path}: multi-label labels; pre-training needs one class index per image")
    train = parts["train"].images, parts["train"].labels
    notes = []
    if "test" in parts:
        test = parts["test"].images, parts["test"].labels
    else:
        kept, carved = stratified_split(train[1], 0.2, seed)
        train, test = (train[0][kept], train[1][kept]), (train[0][carved], train[1][carved])
        notes.append(f"no test split: 20 % of train carved out (stratified, seed {seed})")
    num_classes = int(max(train[1].max(), test[1].max())) + 1
    if len(np.unique(train[1])) < 2:
        raise MedvtabError(f"{path}: 'train_labels' has fewer than two classes")
    return {"train": train, "test": test, "num_classes": num_classes, "class_names": parts.get("class_names"),
            "notes": notes, "sources": sources_of(path)}


def sources_of(path: Path) -> list[str]:
    """The distinct source sets a pooled file names per training image (``train_source``, as
    ``medvtab vqa radiology-data`` writes it); empty when it names none."""
    with np.load(path, allow_pickle=False) as z:
        return sorted({str(s) for s in z["train_source"]}) if "train_source" in z.files else []


def drop_train_duplicates(test: tuple, train_images: np.ndarray) -> tuple[tuple, int]:
    """The test split without images identical to a train image (:func:`~medvtab.data.leakage.image_digest`),
    and how many were dropped."""
    seen = {image_digest(im) for im in train_images}
    keep = np.array([image_digest(im) not in seen for im in test[0]], dtype=bool)
    return (test[0][keep], test[1][keep]), int((~keep).sum())


def input_size(variant: str) -> int:
    return tiny.ARCHS[variant]["img_size"]


def shift_px(size: int) -> int:
    return max(1, round(size * SHIFT_FRACTION))


def to_input(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (N, H, W, C) -> uint8 (N, 3, size, size): grey to RGB, area filter when shrinking."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    if x.shape[-2:] != (size, size):
        shrink = x.shape[-1] > size
        x = F.interpolate(x.float(), size=(size, size), mode="area" if shrink else "bilinear",
                          **({} if shrink else {"align_corners": False}))
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x.contiguous()


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> the tiny backbones' input: [0, 1] then (x - 0.5) / 0.5, as ``Backbone.preprocess`` does."""
    return x.float().div(255).sub(tiny.MEAN[0]).div(tiny.STD[0])


def augment(x: torch.Tensor, g: torch.Generator, hflip: bool = True) -> torch.Tensor:
    """Random shifts of up to :func:`shift_px` (reflect padding) and horizontal flips (``hflip``), per image,
    vectorised."""
    b, _, h, w = x.shape
    shift = shift_px(w)
    padded = F.pad(x, (shift,) * 4, mode="reflect")
    dy, dx = torch.randint(0, 2 * shift + 1, (2, b, 1), generator=g)
    rows, cols = dy + torch.arange(h), dx + torch.arange(w)  # (B, H), (B, W)
    out = padded[torch.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if not hflip:
        return out
    flip = torch.rand(b, generator=g) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


# --- training ---------------------------------------------------------------------------------------------

def batch_mixer(num_classes: int, mixup: float, cutmix: float):
    """MixUp and/or CutMix with these Beta alphas (0 = off): ``(x, y) -> (x, soft targets)``, or None when both
    are off. Draws from torch's global generator, which :func:`train_classifier` seeds."""
    mixers = [m(alpha=a, num_classes=num_classes) for m, a in ((v2.MixUp, mixup), (v2.CutMix, cutmix)) if a > 0]
    return None if not mixers else mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int, seed: int,
                     batch_size: int, lr: float, mixup: float = 0.0, cutmix: float = 0.0, drop_path: float = 0.0,
                     hflip: bool = True, variant: str = "tiny-general", on_step=None,
                     on_note=None) -> tuple[VisionTransformer, list]:
    torch.manual_seed(seed)
    model = VisionTransformer(**dict(tiny.ARCHS[variant], num_classes=num_classes, drop_path_rate=drop_path))
    mix = batch_mixer(num_classes, mixup, cutmix)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    steps_per_epoch = math.ceil(n / batch_size)
    total = epochs * steps_per_epoch
    warmup = warmup_steps(total, WARMUP_FRACTION)
    step, log = 0, []
    model.train()
    for epoch in range(epochs):
        t0, loss_sum, correct = time.perf_counter(), 0.0, 0
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            x, y = augment(normalise(images[idx]), g, hflip), labels[idx]
            x, target = mix(x, y) if mix else (x, y)
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(step, total, warmup, lr)
            logits = model(x)
            loss = F.cross_entropy(logits, target, label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(-1) == y).sum())
            if on_step:
                on_step(step, total, loss.item())
        row = {"epoch": epoch + 1, "loss": round(loss_sum / n, 4), "train_accuracy": round(correct / n, 4),
               "seconds": round(time.perf_counter() - t0, 1)}
        log.append(row)
        if on_note:
            on_note(f"epoch {row['epoch']}/{epochs}: loss {row['loss']:.4f}, train accuracy (augmented) "
                    f"{row['train_accuracy']:.3f}, {row['seconds']:.0f} s")
    model.eval()
    return model, log


def trunk_state(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """The backbone's weights: everything but the classification head, as the tiny ARCH expects."""
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if not k.startswith("head.")}


# --- linear probe -----------------------------------------------------------------------------------------

def random_init_backbone(variant: str) -> ViTBackbone:
    """The seeded random-init network of the same shape (what the tiny backbones were before weights shipped)."""
    return ViTBackbone(tiny.new_model(variant), spec=f"{variant} (random init)", input_size=input_size(variant),
                       mean=tiny.MEAN,
                       std=tiny.STD, random_init=True)


@torch.inference_mode()
def features(backbone, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Frozen pooled features: the final normed CLS token (``Backbone.forward``)."""
    backbone.eval()
    return torch.cat([backbone(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).numpy()


def linear_probe(backbone, train: tuple[torch.Tensor, np.ndarray], test: tuple[torch.Tensor, np.ndarray]) -> float:
    """Test accuracy of a logistic regression on standardised frozen features of the train split."""
    x_train, x_test = features(backbone, train[0]), features(backbone, test[0])
    with threadpool_limits(limits=1):  # BLAS threads on small matrices: 10x slower on a busy 2-core machine
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, train[1])
        return float((probe.predict(x_test) == test[1]).mean())


# --- the command ------------------------------------------------------------------------------------------

def data_name(path: Path) -> str:
    """A registered task name for the file where there is one (``pbc_28.npz`` -> ``pbc``), else its stem
    without a trailing size (``cifar10_32.npz`` -> ``cifar10``)."""
    return catalogue_name(str(path)) or re.sub(r"[-_ ]\d+$", "", Path(path).stem)


def source_info(name: str) -> dict:
    if name in KNOWN_SOURCES:
        return dict(KNOWN_SOURCES[name])
    try:
        task = get_task(name)
    except MedvtabError:
        return {"title": name, "licence": "unknown", "citation": "unknown", "download": "unknown"}
    return {"title": task.title, "licence": task.licence, "citation": task.citation, "download": task.download}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} on {torch.get_num_threads()} "
            f"thread(s), {platform.system()} {platform.release()}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pretrain(data: Path, out: Path, variant: str, *, epochs: int = 5, seed: int = 0, batch_size: int = 128,
             lr: float = 1e-3, mixup: float = 0.0, cutmix: float = 0.0, drop_path: float = 0.0, hflip: bool = True,
             on_step=None, on_note=None) -> dict:
    """Pre-train a tiny expert on ``data``, write ``out`` (.safetensors) and its card; return the card."""
    data, out = Path(data), Path(out)
    if variant not in tiny.VARIANTS:
        raise MedvtabError(f"option '--variant': expected one of {', '.join(tiny.VARIANTS)}, got '{variant}'")
    if out.suffix != ".safetensors":
        raise MedvtabError(f"{out}: the output must be a .safetensors file")
    for path in (out, out.with_suffix(".json"), out.with_suffix(".md")):
        if path.exists():
            raise MedvtabError(f"{path}: exists; choose a new --out (pretrain never overwrites)")
    started = time.perf_counter()
    arrays = load_npz(data, seed)
    name = data_name(data)
    test, dropped = drop_train_duplicates(arrays["test"], arrays["train"][0])
    if not len(test[1]):
        raise MedvtabError(f"{data}: every test image is also a train image; nothing is left to probe on")
    for note in arrays["notes"] + ([f"{dropped} test images byte-identical to a train image dropped from the "
                                    f"probe's test split"] if dropped else []):
        if on_note:
            on_note(f"note: {note}")
    size = input_size(variant)
    train_x, train_y = to_input(arrays["train"][0], size), arrays["train"][1]
    test_x, test_y = to_input(test[0], size), test[1]

    t0 = time.perf_counter()
    model, log = train_classifier(train_x, torch.from_numpy(train_y), arrays["num_classes"], epochs=epochs,
                                  seed=seed, batch_size=batch_size, lr=lr, mixup=mixup, cutmix=cutmix,
                                  drop_path=drop_path, hflip=hflip, variant=variant, on_step=on_step,
                                  on_note=on_note)
    train_seconds = time.perf_counter() - t0

    # what the leakage guard reads: the file's source sets where it names them (kermany-cxr is a task), else its name
    metadata = {"format": "pt", "medvtab.variant": variant,
                tiny.META_PRETRAINED_ON: ",".join(arrays["sources"]) or name,
                "medvtab.data_sha256": sha256(data), "medvtab.epochs": str(epochs), "medvtab.seed": str(seed)}
    state = trunk_state(model)
    atomic_write(out, lambda tmp: save_file(state, tmp, metadata=metadata))

    if on_note:
        on_note("note: linear probe (pre-trained and random init)")
    t0 = time.perf_counter()
    pretrained = load_backbone(f"{variant}@{out}")  # the file as users load it, strictly
    probe = {name_: linear_probe(b, (train_x, train_y), (test_x, test_y))
             for name_, b in (("pretrained", pretrained), ("random_init", random_init_backbone(variant)))}
    probe_seconds = time.perf_counter() - t0

    extra = {"mixup": mixup, "cutmix": cutmix, "drop_path": drop_path}
    regularisers = "".join(text for text, on in ((f", MixUp (alpha {mixup:g})", mixup),
                                                 (f", CutMix (alpha {cutmix:g})", cutmix),
                                                 (" (one of the two per batch, at random)", mixup and cutmix),
                                                 (f", stochastic depth {drop_path:g}", drop_path)) if on)
    card = {
        "variant": variant, "file": out.name, "file_sha256": sha256(out),
        "params": sum(v.numel() for v in state.values()),
        "architecture": {k: v for k, v in tiny.ARCHS[variant].items() if k != "num_classes"},
        "data": {"name": name, "path": str(data), "sha256": sha256(data), **source_info(name),
                 **({"sources": arrays["sources"]} if arrays["sources"] else {}),
                 "num_classes": arrays["num_classes"], "class_names": arrays["class_names"],
                 "train_images": len(train_y), "test_images": len(arrays["test"][1]),
                 "test_duplicates_of_train_dropped": dropped, "notes": arrays["notes"],
                 "preprocessing": f"resized to {size} px with an area filter where larger, grey to RGB; "
                                  f"normalised (x / 255 - 0.5) / 0.5"},
        "objective": OBJECTIVE.format(shift=shift_px(size), flips=" and horizontal flips" if hflip else ", no flips")
                     + regularisers, "why": WHY,
        "epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr, "weight_decay": WEIGHT_DECAY,
        "label_smoothing": LABEL_SMOOTHING, **{k: v for k, v in extra.items() if v},
        **({} if hflip else {"hflip": False}),
        "command": (f"medvtab pretrain --data {data} --out {out} --variant {variant} --epochs {epochs} "
                    f"--seed {seed} --batch-size {batch_size} --lr {lr:g}"
                    + "".join(f" --{k.replace('_', '-')} {v:g}" for k, v in extra.items() if v)
                    + ("" if hflip else " --no-flip")),
        "log": log, "train_seconds": round(train_seconds, 1), "probe_seconds": round(probe_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1), "machine": machine(),
        "linear_probe": {
            "protocol": "logistic regression (sklearn, lbfgs, C=1, features standardised) on the frozen final "
                        "CLS features of the train split; accuracy on the held-out test split",
            "train_images": len(train_y), "test_images": len(test_y),
            "pretrained_accuracy": round(probe["pretrained"], 4),
            "random_init_accuracy": round(probe["random_init"], 4),
            "random_init": f"the same architecture from the fixed seed {tiny.SEEDS[variant]} "
                           f"(medvtab.engine.pretrain.random_init_backbone)",
        },
    }
    write_json(out.with_suffix(".json"), card)
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(card_markdown(card)))
    return card


def card_markdown(card: dict) -> str:
    """One expert's model card as markdown (the bundled MODEL_CARD.md holds both experts' sections)."""
    d, p = card["data"], card["linear_probe"]
    margin = 100 * (p["pretrained_accuracy"] - p["random_init_accuracy"])
    log = ", ".join(f"{r['loss']:.3f}" for r in card["log"])
    lines = [
        f"## `{card['variant']}`: `{card['file']}`",
        "",
        f"- **Data**: {d['title']} (`{d['path']}`, sha256 `{d['sha256'][:16]}...`), {d['num_classes']} classes, "
        f"{d['train_images']} training images; {d['preprocessing'].split(';')[0]}. "
        f"Licence: {d['licence']}. Cite: {d['citation']}. Source: {d['download']}.",
        f"- **Objective**: {card['objective']}.",
        f"- **Why**: {card['why']}.",
        f"- **Settings**: {card['epochs']} epochs, seed {card['seed']}, batch size {card['batch_size']}, "
        f"lr {card['lr']:g}, weight decay {card['weight_decay']}; training loss per epoch: {log}.",
        f"- **Weights**: timm `VisionTransformer` state dict without the classification head "
        f"({card['params']:,} parameters, fp32), sha256 `{card['file_sha256'][:16]}...`; metadata "
        f"`medvtab.pretrained_on = {','.join(d.get('sources') or [d['name']])}`.",
        f"- **Reproduce**: `{card['command']}` (pretrain never overwrites: give a new `--out`).",
        f"- **Time**: {card['train_seconds']:.0f} s training, {card['probe_seconds']:.0f} s linear probe, "
        f"{card['total_seconds']:.0f} s in all, on {card['machine']}.",
    ]
    if d["test_duplicates_of_train_dropped"]:
        lines.append(f"- **Held-out test**: {d['test_duplicates_of_train_dropped']} of the {d['test_images']} test "
                     f"images are byte-identical to a training image (content hash) and were dropped from the "
                     f"probe's test split.")
    for note in d["notes"]:
        lines.append(f"- **Note**: {note}.")
    lines += [
        "",
        f"Linear probe ({p['protocol']}):",
        "",
        "| network | test accuracy | train images | test images |",
        "|---|---|---|---|",
        f"| pre-trained (`{card['variant']}`) | **{p['pretrained_accuracy']:.4f}** | {p['train_images']} | "
        f"{p['test_images']} |",
        f"| random init (seed {tiny.SEEDS[card['variant']]}) | {p['random_init_accuracy']:.4f} | "
        f"{p['train_images']} | {p['test_images']} |",
        "",
        f"Pre-training adds {margin:+.1f} points of linear-probe accuracy.",
        "",
    ]
    return "\n".join(lines)
