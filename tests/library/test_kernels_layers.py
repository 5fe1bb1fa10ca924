"""missiwae.kernels' layers (used by missiwae.networks) compute the same function as torch's own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from missiwae.config import ModelConfig
from missiwae.kernels import ELU, OutputConvTranspose2d, Tanh
from missiwae.networks import ConvDecoder, build_networks

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


def _with_torch_layers(network: nn.Module) -> nn.Module:
    """A copy of `network` with every kernels layer replaced by the torch layer it stands for."""
    import copy

    plain = copy.deepcopy(network)
    for module in plain.modules():
        for name, child in module.named_children():
            if isinstance(child, ELU):
                setattr(module, name, nn.ELU())
            elif isinstance(child, Tanh):
                setattr(module, name, nn.Tanh())
            elif isinstance(child, OutputConvTranspose2d):
                # the same parameters under torch's own class and forward pass
                replacement: nn.Module = copy.deepcopy(child)
                replacement.__class__ = nn.ConvTranspose2d
                setattr(module, name, replacement)
    return plain


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(architecture="mlp", activation="tanh"),
        ModelConfig(architecture="mlp", activation="elu"),
        ModelConfig(architecture="conv"),
    ],
    ids=["mlp_tanh", "mlp_elu", "conv"],
)
def test_networks_equal_the_same_networks_built_from_torch_layers(config):
    """The encoders and decoders compute what nn.ELU / nn.Tanh / nn.ConvTranspose2d would,
    values and parameter gradients, in float64."""
    torch.manual_seed(1)
    encoder, decoder = (network.double() for network in build_networks(config, num_params=2))
    x = torch.rand(3, config.num_features, dtype=torch.float64)
    mask = torch.rand(3, config.num_features) < 0.5
    z = torch.randn(4, config.latent_dim, dtype=torch.float64)
    for network, inputs in ((encoder, (x, mask)), (decoder, (z,))):
        plain = _with_torch_layers(network)
        assert not any(isinstance(m, ELU | Tanh | OutputConvTranspose2d) for m in plain.modules())
        ours, reference = network(*inputs), plain(*inputs)
        ours_out = torch.cat([t.flatten() for t in (ours if isinstance(ours, tuple) else (ours,))])
        reference_out = torch.cat(
            [t.flatten() for t in (reference if isinstance(reference, tuple) else (reference,))]
        )
        torch.testing.assert_close(ours_out, reference_out, rtol=1e-12, atol=1e-12)
        weights = torch.linspace(-1.0, 1.0, ours_out.numel(), dtype=torch.float64)
        grads = torch.autograd.grad((ours_out * weights).sum(), list(network.parameters()))
        reference_grads = torch.autograd.grad((reference_out * weights).sum(), list(plain.parameters()))
        for a, b in zip(grads, reference_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
