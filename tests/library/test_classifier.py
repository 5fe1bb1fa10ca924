"""Downstream classifier of the paper's Table 1: conv net with dropout on imputed MNIST."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from missiwae.classifier import (
    ClassifierConfig,
    ClassifierResult,
    DropoutConvNet,
    pool_predictions,
    train_classifier,
)
from missiwae.data import load_incomplete_mnist

# Plumbing tests need a network, not a good one: this one trains ~50x faster than the default.
TINY = ClassifierConfig(channels=(4, 8), hidden=32, epochs=2, batch_size=32, num_threads=1)


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """On a busy 2-core machine one intra-op thread trained the default net ~3.5x faster than two
    (measured: 7 s vs 26 s for 2000 rows x 3 epochs), so the tests pin it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_digits(num_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random binary 'images' with random labels: learnable only by memorising rows."""
    rng = np.random.default_rng(seed)
    x = (rng.random((num_rows, 784)) < 0.5).astype(np.float32)
    return x, rng.integers(0, 10, num_rows)


@pytest.fixture(scope="module")
def mnist(data_root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train x (3000, 784), train labels, test x (1000, 784), test labels), complete data."""
    train = load_incomplete_mnist("train", missing_rate=0.0, num_rows=3000, data_dir=data_root)
    test = load_incomplete_mnist("test", missing_rate=0.0, num_rows=1000, data_dir=data_root)
    return train.x.numpy(), train.labels.numpy(), test.x.numpy(), test.labels.numpy()


@pytest.fixture(scope="module")
def mnist_result(mnist: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> ClassifierResult:
    """The default (paper-like) architecture, 3 epochs on 2700 rows: ~11-14 s on one busy core."""
    x, y, test_x, test_y = mnist
    config = ClassifierConfig(epochs=3, batch_size=64, learning_rate=2e-3, num_threads=1)
    return train_classifier(x, y, test_x, test_y, config)


# ------------------------------------------------------------------------- network


def test_network_maps_flat_rows_and_images_to_the_same_ten_logits() -> None:
    torch.manual_seed(0)
    net = DropoutConvNet().eval()
    x = torch.rand(3, 784)
    logits = net(x)
    assert logits.shape == (3, 10)
    torch.testing.assert_close(net(x.view(3, 1, 28, 28)), logits)
    # Paper-like sizes: 5x5 convs with 32 and 64 maps, 150 hidden units.
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (5, 5)), (64, (5, 5))]
    assert net.classifier[1].out_features == 150
    with pytest.raises(ValueError, match="expected input of shape"):
        net(torch.rand(3, 28, 28))


def test_dropout_is_active_in_training_and_off_in_eval() -> None:
    torch.manual_seed(0)
    net = DropoutConvNet(dropout=0.5)
    x = torch.rand(4, 784)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))


# ------------------------------------------------------------------- real MNIST


def test_trained_on_real_mnist_the_network_classifies_test_digits_well(
    mnist_result: ClassifierResult,
) -> None:
    # Measured 0.949 test accuracy and 0.15-0.16 nats (seeds 0 and 1); chance is 0.1 and log(10) nats.
    assert mnist_result.test_accuracy > 0.9
    assert math.isfinite(mnist_result.test_cross_entropy)
    assert mnist_result.test_cross_entropy < 0.35 < math.log(10)
    assert 1 <= mnist_result.best_epoch <= mnist_result.epochs_run == 3


def test_result_probabilities_are_those_of_the_reported_scores(
    mnist_result: ClassifierResult, mnist: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
) -> None:
    test_y = mnist[3]
    probs = mnist_result.probabilities
    assert probs.shape == (1000, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.mean(probs.argmax(axis=1) == test_y) == pytest.approx(mnist_result.test_accuracy)
    nll = -np.mean(np.log(probs[np.arange(1000), test_y].astype(np.float64)))
    assert nll == pytest.approx(mnist_result.test_cross_entropy, rel=1e-4)


def test_default_validation_split_holds_out_a_tenth_of_the_rows(mnist_result: ClassifierResult) -> None:
    for row in mnist_result.history:
        assert row["num_train_examples"] == 2700
        assert row["num_valid_examples"] == 300


# ----------------------------------------------------------------- early stopping


def test_early_stopping_returns_the_weights_of_the_best_validation_epoch(
    mnist: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    # 200 rows and no dropout: the validation loss bottoms out after a few epochs and then
    # wanders up, so patience runs out well before the epoch limit (measured: best 9, run 12).
    x, y, valid_x, valid_y = (a[:200] for a in mnist)
    config = replace(TINY, epochs=40, patience=3, hidden=64, dropout=0.0, learning_rate=3e-3)
    # Validation set == test set, so the test scores must be exactly those of the kept epoch.
    result = train_classifier(x, y, valid_x, valid_y, config, valid=(valid_x, valid_y))

    losses = [row["valid_loss"] for row in result.history]
    assert result.best_epoch > 1
    assert result.epochs_run == len(result.history) == result.best_epoch + config.patience < config.epochs
    assert losses[result.best_epoch - 1] == min(losses)
    assert all(loss > min(losses) for loss in losses[result.best_epoch :])
    best = result.history[result.best_epoch - 1]
    assert result.test_cross_entropy == pytest.approx(best["valid_loss"], rel=1e-9)
    assert result.test_accuracy == pytest.approx(best["valid_accuracy"])
    # ...and not those of the last epoch trained.
    assert result.test_cross_entropy < losses[-1]


def test_training_stops_at_the_epoch_limit_when_validation_keeps_improving(
    mnist_result: ClassifierResult,
) -> None:
    losses = [row["valid_loss"] for row in mnist_result.history]
    assert losses == sorted(losses, reverse=True)  # measured: 0.35, 0.17, 0.13
    assert mnist_result.best_epoch == mnist_result.epochs_run == 3


# ---------------------------------------------------------- multiple imputation


def test_union_of_m_copies_trains_on_every_copy_of_every_training_row() -> None:
    x, y = random_digits(100)
    rng = np.random.default_rng(2)
    copies = [np.clip(x + rng.random(x.shape).astype(np.float32), 0, 1) for _ in range(3)]
    result = train_classifier(copies, y, x[:20], y[:20], replace(TINY, epochs=1, epoch_steps="union"))
    # 10% of the 100 rows held out from each of the 3 copies.
    assert result.history[0]["num_train_examples"] == 3 * 90
    assert result.history[0]["num_valid_examples"] == 3 * 10


def test_m_copies_get_the_gradient_steps_of_one_copy_per_epoch_and_all_of_them_every_m_epochs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """epoch_steps="rows" (the default): the same cap on gradient steps for one copy and for the
    union of three; three epochs of the union go through each of its examples exactly once."""
    x, y = random_digits(64)
    copies = [x, 1.0 - x, np.roll(x, 1, axis=1)]
    valid = (x[:8], y[:8])
    seen: list[torch.Tensor] = []
    real_cross_entropy = torch.nn.functional.cross_entropy

    def counting(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(target.clone())
        return real_cross_entropy(logits, target)

    monkeypatch.setattr("missiwae.classifier.F.cross_entropy", counting)
    config = replace(TINY, epochs=3, patience=3, batch_size=16)
    one = train_classifier(x, y, x[:8], y[:8], config, valid=valid)
    steps_one = len(seen)
    seen.clear()
    union = train_classifier(copies, y, x[:8], y[:8], config, valid=valid)
    assert steps_one == len(seen) == 3 * 4  # 64 rows / 16 per batch, 3 epochs, either way
    assert (
        [h["num_train_examples"] for h in union.history]
        == [64, 64, 64]
        == [h["num_train_examples"] for h in one.history]
    )
    # The union's 192 examples, each once: every label appears 3 times as often as in y.
    labels = torch.cat(seen).numpy()
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), 3 * np.bincount(y, minlength=10))

    seen.clear()
    train_classifier(copies, y, x[:8], y[:8], replace(config, epoch_steps="union"), valid=valid)
    assert len(seen) == 3 * 12  # a pass over all three copies per epoch


def test_with_one_copy_an_epoch_is_one_pass_whatever_the_epoch_unit() -> None:
    x, y = random_digits(70)  # 63 training rows: the last batch of a pass is short
    rows = train_classifier(x, y, x[:10], y[:10], replace(TINY, epochs=2, epoch_steps="rows"))
    union = train_classifier(x, y, x[:10], y[:10], replace(TINY, epochs=2, epoch_steps="union"))
    np.testing.assert_array_equal(rows.probabilities, union.probabilities)
    assert [h["num_train_examples"] for h in rows.history] == [63, 63]


def test_validation_rows_are_held_out_from_every_copy() -> None:
    # Three identical copies of random digits: if any copy of a validation row leaked into
    # training, the memorising net would classify it perfectly (the control below shows it does).
    x, y = random_digits(120, seed=0)
    config = replace(
        TINY,
        epochs=15,
        patience=15,
        hidden=64,
        dropout=0.0,
        learning_rate=3e-3,
        validation_fraction=0.25,
        epoch_steps="union",
    )
    held_out = train_classifier([x, x, x], y, x[:10], y[:10], config)
    assert held_out.history[-1]["train_loss"] < 0.1  # it did memorise its training rows
    assert held_out.history[-1]["valid_accuracy"] < 0.6  # measured 0.2; chance 0.1

    leaked = train_classifier([x, x, x], y, x[:10], y[:10], config, valid=(x, y))
    assert leaked.history[-1]["valid_accuracy"] > 0.9  # measured 1.0


def test_a_stacked_array_of_copies_is_the_same_as_a_list() -> None:
    x, y = random_digits(60)
    copies = [x, 1.0 - x]
    as_list = train_classifier(copies, y, x[:10], y[:10], replace(TINY, epochs=1))
    as_array = train_classifier(np.stack(copies), y, x[:10], y[:10], replace(TINY, epochs=1))
    np.testing.assert_array_equal(as_list.probabilities, as_array.probabilities)
    single = train_classifier(x, y, x[:10], y[:10], replace(TINY, epochs=1))
    np.testing.assert_array_equal(
        single.probabilities, train_classifier([x], y, x[:10], y[:10], replace(TINY, epochs=1)).probabilities
    )


# ---------------------------------------------------------------------- seeding


def test_same_seed_gives_identical_results_and_another_seed_differs(
    mnist: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    x, y, test_x, test_y = mnist
    x, y, test_x, test_y = x[:300], y[:300], test_x[:200], test_y[:200]
    before = torch.random.get_rng_state()
    first = train_classifier(x, y, test_x, test_y, TINY)
    assert torch.equal(torch.random.get_rng_state(), before)  # caller's RNG untouched
    again = train_classifier(x, y, test_x, test_y, TINY)
    other = train_classifier(x, y, test_x, test_y, replace(TINY, seed=1))

    np.testing.assert_array_equal(first.probabilities, again.probabilities)
    assert first.history == again.history
    assert first.test_cross_entropy == again.test_cross_entropy
    assert not np.array_equal(first.probabilities, other.probabilities)
    assert first.history[0]["train_loss"] != other.history[0]["train_loss"]


# ---------------------------------------------------------------------- pooling


def test_pooling_identical_results_scores_like_each_of_them(
    mnist_result: ClassifierResult, mnist: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
) -> None:
    accuracy, cross_entropy = pool_predictions([mnist_result, mnist_result], mnist[3])
    assert accuracy == pytest.approx(mnist_result.test_accuracy)
    assert cross_entropy == pytest.approx(mnist_result.test_cross_entropy, rel=1e-4)


def _result(probabilities: list[list[float]]) -> ClassifierResult:
    probs = np.zeros((len(probabilities), 10), dtype=np.float32)
    probs[:, : len(probabilities[0])] = probabilities
    return ClassifierResult(0.0, 0.0, 1, 1, [], probs)


def test_pooling_two_results_averages_their_probabilities() -> None:
    labels = np.array([0, 1])
    a = _result([[0.4, 0.6], [0.2, 0.8]])  # row 0 wrong, row 1 right
    b = _result([[0.9, 0.1], [0.6, 0.4]])  # row 0 right, row 1 wrong
    accuracy, cross_entropy = pool_predictions([a, b], labels)
    # Averages: row 0 -> [0.65, 0.35] (right), row 1 -> [0.4, 0.6] (right).
    assert accuracy == 1.0
    assert cross_entropy == pytest.approx(-(math.log(0.65) + math.log(0.6)) / 2, rel=1e-6)


def test_pooling_rejects_no_results_and_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="results is empty"):
        pool_predictions([], np.array([0, 1]))
    with pytest.raises(ValueError, match=r"probabilities has shape \(2, 10\), expected \(3, 10\)"):
        pool_predictions([_result([[1.0], [1.0]])], np.array([0, 0, 0]))


# ------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    return random_digits(20)


def test_nan_in_any_imputed_copy_is_rejected(small: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = small
    holed = x.copy()
    holed[3, 100] = np.nan
    with pytest.raises(ValueError, match=r"imputed data must be complete: train_sets\[1\]"):
        train_classifier([x, holed], y, x, y, TINY)
    with pytest.raises(ValueError, match="imputed data must be complete: test_x"):
        train_classifier(x, y, holed, y, TINY)


def test_labels_outside_zero_to_nine_are_rejected(small: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = small
    bad = y.copy()
    bad[0] = 10
    with pytest.raises(ValueError, match=r"train_labels must be integers in 0\.\.9, found values in"):
        train_classifier(x, bad, x, y, TINY)
    with pytest.raises(ValueError, match=r"test_labels must be integers in 0\.\.9"):
        train_classifier(x, y, x, y - 1, TINY)
    with pytest.raises(ValueError, match=r"must be integers in 0\.\.9, got dtype float"):
        train_classifier(x, y.astype(float), x, y, TINY)


def test_copies_whose_rows_do_not_match_the_labels_are_rejected(small: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = small
    with pytest.raises(ValueError, match=r"train_sets\[1\] has 19 rows but there are 20 labels"):
        train_classifier([x, x[:-1]], y, x, y, TINY)
    with pytest.raises(ValueError, match=r"must have shape \(N, 784\)"):
        train_classifier(x[:, :700], y, x, y, TINY)
    with pytest.raises(ValueError, match="valid x has 20 rows but there are 19 labels"):
        train_classifier(x, y, x, y, TINY, valid=(x, y[:-1]))


def test_an_empty_list_of_training_sets_is_rejected(small: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = small
    with pytest.raises(ValueError, match="train_sets is empty"):
        train_classifier([], y, x, y, TINY)


def test_invalid_configs_are_rejected() -> None:
    with pytest.raises(ValueError, match="patience must be a positive int"):
        ClassifierConfig(patience=0)
    with pytest.raises(ValueError, match=r"validation_fraction must be in \(0, 1\)"):
        ClassifierConfig(validation_fraction=1.0)
    with pytest.raises(ValueError, match="epoch_steps must be one of"):
        ClassifierConfig(epoch_steps="copies")
    with pytest.raises(ValueError, match="learning_rate must be positive"):
        ClassifierConfig(learning_rate=0.0)
