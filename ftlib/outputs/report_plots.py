"""The report's figures: one matplotlib PNG per function, drawn from the data functions of :mod:`ftlib.outputs.report`.

Headless (the Agg backend), so it runs on servers and in training processes without a display."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt

DPI = 100


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_losses(curves: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    if curves["steps"]:
        ax.plot(curves["steps"], curves["loss"], color="tab:blue", alpha=0.35, label="training loss")
        ax.plot(curves["steps"], curves["smoothed"], color="tab:blue", label="training loss (smoothed)")
    if curves["eval_steps"]:
        ax.plot(curves["eval_steps"], curves["eval_loss"], "o-", color="tab:orange", label="evaluation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Loss")
    ax.grid(alpha=0.3)
    if curves["steps"] or curves["eval_steps"]:
        ax.legend()
    return _save(fig, path)


def plot_series(curve: dict[str, Any], path: Path, title: str, ylabel: str, marker: str = "o-") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(curve["steps"], curve["values"], marker, color="tab:green")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_learning_rates(curves: dict[str, dict[str, list]], marks: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    cmap = plt.get_cmap("viridis")
    names = list(curves)
    for i, name in enumerate(names):
        curve = curves[name]
        ax.plot(curve["steps"], curve["values"], color=cmap(i / max(1, len(names) - 1)), label=name)
    if any(v > 0 for c in curves.values() for v in c["values"]):
        ax.set_yscale("log")
    for mark in marks:
        ax.axvline(mark["step"], color="red", linestyle="--", alpha=0.6)
        ax.annotate(f"stage {mark['stage']}", (mark["step"], 1.0), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=8, color="red")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate (log)")
    ax.set_title("Learning rate per parameter group" + (" (dashed: unfreezing)" if marks else ""))
    ax.grid(alpha=0.3, which="both")
    if names:
        ax.legend(fontsize=7, ncol=2 if len(names) > 8 else 1, loc="lower left")
    return _save(fig, path)


def plot_confusion(data: dict[str, Any], path: Path) -> Path:
    names, matrix = data["labels"], data["matrix"]
    n = len(names)
    size = min(14, 3 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), names, rotation=90 if n > 6 else 0, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (validation)")
    if n <= 30:
        top = max(1, max(max(row) for row in matrix))
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=7,
                        color="white" if matrix[i][j] > top / 2 else "black")
    return _save(fig, path)


def plot_class_scores(scores: dict[str, dict[str, float]], path: Path, title: str) -> Path:
    types = list(scores)
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(types) + 2), 4))
    width = 0.27
    for k, (key, color) in enumerate((("precision", "tab:blue"), ("recall", "tab:orange"), ("f1", "tab:green"))):
        xs = [i + (k - 1) * width for i in range(len(types))]
        ax.bar(xs, [scores[t][key] for t in types], width, label=key, color=color)
    ax.set_xticks(range(len(types)), [f"{t}\n(n={int(scores[t]['support'])})" for t in types], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_calibration(data: dict[str, Any], path: Path, outcome: str = "accuracy") -> Path:
    fig, ax = plt.subplots(figsize=(5, 5))
    edges = data["bin_edges"]
    centers = [(a + b) / 2 for a, b in pairwise(edges)]
    filled = [i for i, c in enumerate(data["count"]) if c > 0]
    ax.bar([centers[i] for i in filled], [data["accuracy"][i] for i in filled], width=edges[1] - edges[0],
           edgecolor="black", alpha=0.7, label=outcome)
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.plot([data["confidence"][i] for i in filled], [data["accuracy"][i] for i in filled], "o", color="tab:red",
            label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel(outcome)
    ax.set_title(f"Reliability (ECE = {data['ece']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_image_grid(images: list, captions: list[str], path: Path, columns: int = 4) -> Path:
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, caption in zip(axes.flat, images, captions):
        ax.imshow(image)
        ax.set_title(caption, fontsize=8)
    fig.suptitle("Top losses (validation)")
    return _save(fig, path)
