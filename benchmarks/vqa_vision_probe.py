"""Does a vision side see radiology? A linear probe (logistic regression on the frozen tokens, mean and first token)
of each SLAKE image's modality (CT / MRI / X-ray) and body region (SLAKE's ``location``), fitted on the SLAKE train
images, scored on the SLAKE test images (the two share no image). Seconds per spec on a CPU; the table in
docs/medvqa.md.

    python benchmarks/vqa_vision_probe.py [SPEC[:IMG_SIZE] ...]     # default: tiny-medical tiny-general
"""
from __future__ import annotations

import sys
from collections import Counter

import torch
from sklearn.linear_model import LogisticRegression

from medvtab.vqa import data as vqa_data
from medvtab.vqa.radiology import slake_image_fields
from medvtab.vqa.vision import load_vision


def image_labels(split: str) -> dict:
    """image path -> (modality, location) of every image of one SLAKE split."""
    folder = vqa_data.set_folder("slake")
    return {folder / "imgs" / name: pair for name, pair in slake_image_fields(folder, split).items()}


def probe(spec: str, img_size: int | None, train: dict, test: dict) -> dict:
    encoder = load_vision(spec, img_size)

    def features(labels):
        tokens = encoder.encode(vqa_data.load_images(list(labels), encoder.input_size))
        return torch.cat([tokens.mean(1), tokens[:, 0]], dim=-1).numpy()

    x_train, x_test = features(train), features(test)
    out = {}
    for k, name in enumerate(("modality", "location")):
        y_train, y_test = [v[k] for v in train.values()], [v[k] for v in test.values()]
        clf = LogisticRegression(max_iter=2000).fit(x_train, y_train)
        out[name] = (clf.score(x_test, y_test), Counter(y_test).most_common(1)[0][1] / len(y_test))
    return out


def main(specs: list[str]) -> None:
    torch.set_num_threads(1)
    train, test = image_labels("train"), image_labels("test")
    print(f"SLAKE images: {len(train)} train, {len(test)} test")
    print("| vision side | modality probe | (majority) | body region probe | (majority) |\n|---|---|---|---|---|")
    for spec in specs:
        name, _, size = spec.rpartition(":")
        name, size = (name, int(size)) if size.isdigit() else (spec, None)  # 'timm:NAME' has a colon too
        r = probe(name, size, train, test)
        print(f"| {spec} | {r['modality'][0]:.3f} | {r['modality'][1]:.3f} | {r['location'][0]:.3f} | "
              f"{r['location'][1]:.3f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["tiny-medical", "tiny-general"])
