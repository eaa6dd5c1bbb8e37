"""A 2-D map of a representation: PCA of the features, one colour per class.

PCA is deterministic and needs nothing beyond numpy, so two runs' maps are
comparable; it shows the directions of largest variance, not local
neighbourhoods (t-SNE/UMAP would, at the price of a dependency and
run-to-run variation).
"""

from __future__ import annotations

import numpy as np


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projects [N, D] features on their top two principal components.

    Returns the points [N, 2] and the fraction of variance each axis explains.
    The sign of each axis is fixed (largest loading positive) so the map does
    not flip between runs.
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) < 2 or x.shape[1] < 2:
        raise ValueError(f"pca_2d needs features [N >= 2, D >= 2], got {x.shape}.")
    x = x - x.mean(axis=0)
    _, singular, components = np.linalg.svd(x, full_matrices=False)
    components = components[:2]
    signs = np.sign(components[np.arange(2), np.abs(components).argmax(axis=1)])
    components = components * signs[:, None]
    variance = singular**2
    return x @ components.T, variance[:2] / max(variance.sum(), 1e-30)


def save_map(
    features: np.ndarray, labels: np.ndarray, path: str, *, title: str, class_names=None
) -> None:
    """Writes the PCA map of `features` coloured by `labels` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    points, explained = pca_2d(features)
    figure, axes = plt.subplots(figsize=(6, 5), dpi=120)
    classes = np.unique(labels)
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, label in enumerate(classes):
        chosen = labels == label
        name = class_names[label] if class_names is not None else str(label)
        axes.scatter(*points[chosen].T, s=6, color=colours(i % colours.N), label=name)
    axes.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    axes.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)")
    axes.set_title(title)
    axes.legend(markerscale=3, fontsize=7, loc="best", ncol=1 + len(classes) // 12)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
