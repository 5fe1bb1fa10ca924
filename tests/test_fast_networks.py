"""The CPU fast paths of missiwae.networks compute the same function as torch's own layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from missiwae.config import ModelConfig
from missiwae.networks import ELU, ConvDecoder, OutputConvTranspose2d, Tanh, build_networks


def test_elu_equals_torch_elu_with_its_gradient_in_float64():
    x = torch.cat([torch.linspace(-40, 40, 2001), torch.tensor([0.0, -1e-12, 1e-12, -700.0])])
    x = x.double().requires_grad_()
    ours = ELU()(x)
    reference = F.elu(x)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-15)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x)
    (grad_reference,) = torch.autograd.grad(reference.sum(), x)
    assert torch.allclose(grad_ours, grad_reference, rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(ELU(), (torch.randn(6, 5, dtype=torch.float64, requires_grad=True),))


def test_elu_in_float32_is_within_one_rounding_of_one_from_torch_elu():
    x = torch.randn(100_000) * 5
    assert (ELU()(x) - F.elu(x)).abs().max() <= 2**-24


def test_tanh_equals_torch_tanh_with_its_gradient_in_float64():
    x = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([0.0, -1e-12, 1e-12, 400.0, -400.0])])
    x = x.double().requires_grad_()
    ours, reference = Tanh()(x), torch.tanh(x)
    assert torch.allclose(ours, reference, rtol=0, atol=4e-16)
    (grad_ours,) = torch.autograd.grad(ours.sum(), x)
    (grad_reference,) = torch.autograd.grad(reference.sum(), x)
    assert torch.allclose(grad_ours, grad_reference, rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(Tanh(), (torch.randn(6, 5, dtype=torch.float64, requires_grad=True),))


def test_tanh_in_float32_is_within_three_roundings_of_one_from_torch_tanh():
    x = torch.randn(100_000) * 5
    assert (Tanh()(x) - torch.tanh(x)).abs().max() <= 3 * 2**-24


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
