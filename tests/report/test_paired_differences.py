"""The paired standard error of a difference between two models scored on the same images."""

from __future__ import annotations

import math

import numpy as np

from paper.paired_differences import paired_difference


def test_paired_error_is_the_spread_of_the_per_image_differences_worked_by_hand() -> None:
    a, b = np.array([1.0, 2.0, 3.0, 6.0]), np.array([0.0, 2.0, 2.0, 4.0])
    diff, paired, independent = paired_difference(a, b)
    # a − b = (1, 0, 1, 2): mean 1, sd √(2/3); sd(a) = √(14/3), sd(b) = √(8/3)
    assert diff == 1.0
    assert math.isclose(paired, math.sqrt(2 / 3) / 2)
    assert math.isclose(independent, math.sqrt(14 / 3 + 8 / 3) / 2)


def test_a_shared_image_effect_cancels_in_the_paired_error_only() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(-120.0, 30.0, size=1000)  # what both models share: how hard each image is
    a, b = image + 2.0 + rng.normal(0, 1, 1000), image + rng.normal(0, 1, 1000)
    diff, paired, independent = paired_difference(a, b)
    assert abs(diff - 2.0) < 3 * paired
    assert paired < 0.1 < 1.0 < independent  # √2/√1000 ≈ 0.045 against √2·30/√1000 ≈ 1.3
