"""The CPU fast paths of missiwae.networks compute the same function as torch's own layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from missiwae.config import ModelConfig
from missiwae.networks import ELU, ConvDecoder, OutputConvTranspose2d, Tanh, build_networks

FAST_ACTIVATIONS = [
    # (layer, torch's own function, the float32 bound: roundings of 1, ulp(1)/2 = 2^-24 each)
    pytest.param(ELU, F.elu, 1, id="elu"),
    pytest.param(Tanh, torch.tanh, 3, id="tanh"),
]


@pytest.mark.parametrize(("layer", "reference", "roundings"), FAST_ACTIVATIONS)
def test_fast_activation_equals_torch_with_its_gradient_in_float64(layer, reference, roundings):
    x = torch.cat([torch.linspace(-40, 40, 2001), torch.tensor([0.0, -1e-12, 1e-12, 400.0, -700.0])])
    x = x.double().requires_grad_()
    ours, theirs = layer()(x), reference(x)
    assert torch.allclose(ours, theirs, rtol=0, atol=4e-16)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x)
    (grad_theirs,) = torch.autograd.grad(theirs.sum(), x)
    assert torch.allclose(grad_ours, grad_theirs, rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(layer(), (torch.randn(6, 5, dtype=torch.float64, requires_grad=True),))


@pytest.mark.parametrize(("layer", "reference", "roundings"), FAST_ACTIVATIONS)
def test_fast_activation_in_float32_is_within_a_few_roundings_of_torch(layer, reference, roundings):
    x = torch.randn(100_000) * 5
    assert (layer()(x) - reference(x)).abs().max() <= roundings * 2**-24


def test_output_transposed_convolution_equals_torch_values_and_gradients():
    torch.manual_seed(0)
    for out_channels in (1, 2, 3, 4):
        reference = nn.ConvTranspose2d(4, out_channels, 5, stride=2, padding=2, output_padding=1).double()
        ours = OutputConvTranspose2d(4, out_channels, 5, stride=2, padding=2, output_padding=1).double()
        ours.load_state_dict(reference.state_dict())
        x = torch.randn(3, 4, 7, 7, dtype=torch.float64, requires_grad=True)
        y_ours, y_reference = ours(x), reference(x)
        assert y_ours.shape == y_reference.shape == (3, out_channels, 14, 14)
        assert torch.allclose(y_ours, y_reference, rtol=0, atol=1e-12)
        weights = torch.randn_like(y_ours)
        grads_ours = torch.autograd.grad((y_ours * weights).sum(), [x, *ours.parameters()])
        grads_reference = torch.autograd.grad((y_reference * weights).sum(), [x, *reference.parameters()])
        for a, b in zip(grads_ours, grads_reference, strict=True):
            assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_convolutional_decoder_keeps_its_parameter_names_and_shapes():
    """Checkpoints written before the fast layers existed still load."""
    decoder = ConvDecoder(50, (28, 28), (16, 32, 32), num_params=1)
    names = {name: tuple(p.shape) for name, p in decoder.state_dict().items()}
    assert names["upsample.4.weight"] == (16, 1, 5, 5)
    assert names["upsample.4.bias"] == (1,)
    assert sorted(names) == sorted(
        ["project.0.weight", "project.0.bias"]
        + [f"upsample.{i}.{kind}" for i in (0, 2, 4) for kind in ("weight", "bias")]
    )


@pytest.mark.parametrize(("name", "layer_type"), [("elu", ELU), ("tanh", Tanh)])
def test_mlp_activations_use_the_fast_layers(name, layer_type):
    encoder, decoder = build_networks(ModelConfig(architecture="mlp", activation=name), num_params=1)
    assert any(isinstance(layer, layer_type) for layer in encoder.modules())
    assert any(isinstance(layer, layer_type) for layer in decoder.modules())
