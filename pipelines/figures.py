"""PNG figures for MLflow: samples from the model (paper Figure 2) and incomplete digits beside
their imputations (Figure 3). Missing pixels are drawn in red so they cannot be mistaken for 0."""

from __future__ import annotations

from typing import Any

import numpy as np

from missiwae.model import MissIWAE, make_generator


def _grid(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(n, 28, 28, 3) -> one (rows*28, cols*28, 3) picture with a 1-pixel gutter."""
    size = images.shape[1] + 1
    canvas = np.ones((rows * size, cols * size, 3), dtype=np.float32)
    for index, image in enumerate(images[: rows * cols]):
        r, c = divmod(index, cols)
        canvas[r * size : r * size + image.shape[0], c * size : c * size + image.shape[1]] = image
    return canvas


def _gray(x: np.ndarray) -> np.ndarray:
    """(n, 784) in [0, 1] -> (n, 28, 28, 3), ink dark on white."""
    values = 1.0 - x.reshape(-1, 28, 28)
    return np.repeat(values[..., None], 3, axis=-1)


def samples_figure(model: MissIWAE, num_samples: int = 64, seed: int = 0) -> Any:
    """Figure 2: E[x | z] for z ~ p(z), an 8-column grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = model.generative_mean(num_samples, make_generator(seed, model.device)).cpu().numpy()
    figure, axis = plt.subplots(figsize=(6, 6))
    axis.imshow(_grid(_gray(means), -(-num_samples // 8), 8))
    axis.set_title("samples from the trained model (decoder means)")
    axis.axis("off")
    return figure


def imputations_figure(x: np.ndarray, mask: np.ndarray, imputed: np.ndarray, num_rows: int = 8) -> Any:
    """Figure 3: incomplete digits (missing pixels red) beside their missIWAE imputations.

    x, imputed (n, 784) in [0, 1]; mask (n, 784) bool, True = observed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(num_rows, len(x))
    incomplete = _gray(np.where(mask[:count], x[:count], 0.0))
    holes = ~mask[:count].reshape(-1, 28, 28)
    incomplete[holes] = (1.0, 0.35, 0.35)
    pairs = np.stack([incomplete, _gray(imputed[:count])], axis=1).reshape(-1, 28, 28, 3)
    figure, axis = plt.subplots(figsize=(3, 1.5 * count))
    axis.imshow(_grid(pairs, count, 2))
    axis.set_title("incomplete (red: missing) | imputed")
    axis.axis("off")
    return figure


def close(figure: Any) -> None:
    import matplotlib.pyplot as plt

    plt.close(figure)


__all__ = ["close", "imputations_figure", "samples_figure"]
