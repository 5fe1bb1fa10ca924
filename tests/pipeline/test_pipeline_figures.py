"""The figures logged to MLflow: right size, missing pixels marked, written as PNG."""

from __future__ import annotations

import numpy as np
import torch

from missiwae.config import ModelConfig
from missiwae.model import MissIWAE
from pipelines import figures


def test_samples_and_imputation_figures_render_to_png(tmp_path):
    torch.manual_seed(0)
    model = MissIWAE.from_config(ModelConfig(latent_dim=4, hidden=(16,)))
    rng = np.random.default_rng(0)
    x = (rng.random((5, 784)) < 0.2).astype(np.float32)
    mask = rng.random((5, 784)) < 0.5
    imputed = np.where(mask, x, 0.5).astype(np.float32)
    for figure, name in (
        (figures.samples_figure(model, num_samples=16), "samples.png"),
        (figures.imputations_figure(x, mask, imputed, num_rows=3), "imputed.png"),
    ):
        figure.savefig(tmp_path / name)
        figures.close(figure)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_imputation_figure_marks_missing_pixels_red():
    x = np.zeros((1, 784), dtype=np.float32)
    mask = np.ones((1, 784), dtype=bool)
    mask[0, 0] = False
    picture = figures._grid(figures._gray(np.where(mask, x, 0.0)), 1, 1)
    assert picture.shape == (29, 29, 3)
    figure = figures.imputations_figure(x, mask, x, num_rows=1)
    image = figure.axes[0].get_images()[0].get_array()
    figures.close(figure)
    assert tuple(np.round(image[0, 0], 2)) == (1.0, 0.35, 0.35)  # the missing pixel
    assert tuple(image[0, 1]) == (1.0, 1.0, 1.0)  # an observed 0: white
