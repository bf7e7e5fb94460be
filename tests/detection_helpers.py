"""Tiny COCO-format data and tiny detectors for the object-detection tests (built in the test, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CATEGORIES = [{"id": 1, "name": "square"}, {"id": 3, "name": "bar"}, {"id": 7, "name": "unused"}]


def coco_split(root: Path, name: str, n: int, seed: int = 0, size=(80, 64), negatives: int = 0) -> Path:
    """``root/images/<name>_<i>.png`` with a red square (category 1) and a blue bar (category 3) at random places
    on noise, and ``root/<name>.json`` (COCO); the last ``negatives`` images have no object."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    width, height = size
    images, annotations = [], []
    for i in range(n):
        pixels = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
        file = f"{name}_{i}.png"
        image_id = 1000 * seed + i + 1
        if i < n - negatives:
            x, y = int(rng.integers(2, width - 26)), int(rng.integers(2, height - 26))
            pixels[y:y + 20, x:x + 20] = (230, 40, 40)
            annotations.append({"id": len(annotations) + 1 + 10000 * seed, "image_id": image_id, "category_id": 1,
                                "bbox": [x, y, 20, 20], "area": 400, "iscrowd": 0})
            bx, by = int(rng.integers(2, width - 14)), int(rng.integers(2, height - 34))
            if not (bx + 12 > x and bx < x + 20 and by + 30 > y and by < y + 20):
                pixels[by:by + 30, bx:bx + 12] = (40, 40, 230)
                annotations.append({"id": len(annotations) + 1 + 10000 * seed, "image_id": image_id,
                                    "category_id": 3, "bbox": [bx, by, 12, 30], "area": 360, "iscrowd": 0})
        Image.fromarray(pixels).save(root / "images" / file)
        images.append({"id": image_id, "file_name": file, "width": width, "height": height})
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def tiny_dinov2(path: Path) -> Path:
    """A two-layer DINOv2 (hidden 32, patch 8) with its image processor: a backbone checkpoint for --backbone."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=64, patch_size=8)).save_pretrained(path)
    BitImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(path)
    return path


def tiny_detector(path: Path, num_labels: int = 3) -> Path:
    """A tiny Conditional DETR on a tiny DINOv2, saved as a detector checkpoint (with its processor)."""
    from transformers import (
        ConditionalDetrConfig,
        ConditionalDetrForObjectDetection,
        ConditionalDetrImageProcessor,
        Dinov2Config,
    )

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            image_size=64, patch_size=8, out_features=["stage2"], reshape_hidden_states=True)
    config = ConditionalDetrConfig(use_timm_backbone=False, backbone_config=backbone, backbone=None,
                                   use_pretrained_backbone=False, num_labels=num_labels, d_model=32, encoder_layers=1,
                                   decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                                   encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=8)
    ConditionalDetrForObjectDetection(config).save_pretrained(path)
    ConditionalDetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(path)
    return path
