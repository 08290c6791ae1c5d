from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from training.model import (
    CONV_END_SIDE,
    AutoEncoder,
    ModelConfig,
    ResidualBlock,
    conv_widths,
    kl_to_standard_normal,
    loss_terms,
    reconstruction_nll,
    reparameterize,
)


def test_kl_matches_the_closed_form_of_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=gen) * 2
    logvar = torch.randn(5, 3, generator=gen) * 3  # log-variance: any real number
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(kl_to_standard_normal(mu, logvar), expected, atol=1e-5)


def test_kl_by_hand_for_one_dimension() -> None:
    # KL(N(1, e^2) || N(0, 1)) = 1/2 (sigma^2 + mu^2 - 1 - log sigma^2) with sigma^2 = e^2.
    kl = kl_to_standard_normal(torch.tensor([[1.0]]), torch.tensor([[2.0]]))
    assert kl.item() == pytest.approx(0.5 * (math.e**2 + 1 - 1 - 2), rel=1e-6)
    assert kl_to_standard_normal(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0


def test_reparameterisation_uses_sigma_from_log_variance() -> None:
    mu, eps = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 1.0]])
    logvar = torch.log(torch.tensor([[4.0, 0.25]]))  # sigma 2 and 0.5
    assert torch.allclose(reparameterize(mu, logvar, eps), torch.tensor([[2.0, -1.5]]))


def test_bernoulli_and_gaussian_likelihoods() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 28, 28, generator=gen)
    logits = torch.randn(4, 784, generator=gen)
    binary = torch.bernoulli(x, generator=gen)
    expected = -Bernoulli(logits=logits).log_prob(binary.flatten(1)).sum(1)
    assert torch.allclose(reconstruction_nll(logits, binary, "bernoulli"), expected, rtol=1e-5)
    sigma = 0.2
    expected = -Normal(torch.sigmoid(logits), sigma).log_prob(x.flatten(1)).sum(1)
    got = reconstruction_nll(logits, x, "gaussian", gaussian_sigma=sigma)
    assert torch.allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_shapes_and_heads(architecture: str) -> None:
    x = torch.rand(3, 1, 28, 28)
    vae = AutoEncoder(ModelConfig("vae", architecture, latent_dim=5, hidden=(64, 32)))  # type: ignore[arg-type]
    mu, logvar = vae.encode(x)
    assert mu.shape == (3, 5) and logvar is not None and logvar.shape == (3, 5)
    assert vae.decode_logits(mu).shape == (3, 784)
    ae = AutoEncoder(ModelConfig("ae", architecture, latent_dim=5, hidden=(64,)))  # type: ignore[arg-type]
    code, none = ae.encode(x)
    assert code.shape == (3, 5) and none is None
    assert loss_terms(ae, x, "bernoulli", beta=1.0).kl.abs().sum() == 0


def test_logvar_head_is_unconstrained() -> None:
    torch.manual_seed(0)
    vae = AutoEncoder(ModelConfig(latent_dim=8, hidden=(16,)))
    with torch.no_grad():
        vae.logvar_head.bias.fill_(-3.0)  # type: ignore[union-attr]
    _, logvar = vae.encode(torch.rand(10, 1, 28, 28))
    assert logvar is not None and (logvar < 0).any()  # no ReLU or softplus on it


def test_beta_weights_the_kl_term() -> None:
    torch.manual_seed(0)
    vae = AutoEncoder(ModelConfig(latent_dim=4, hidden=(16,)))
    x = torch.rand(8, 1, 28, 28)
    torch.manual_seed(1)
    t1 = loss_terms(vae, x, "bernoulli", beta=1.0)
    torch.manual_seed(1)
    t0 = loss_terms(vae, x, "bernoulli", beta=0.0)
    assert torch.allclose(t1.loss, (t1.recon + t1.kl).mean())
    assert torch.allclose(t0.loss, t0.recon.mean())


@pytest.mark.parametrize(
    ("shape", "widths"),
    [
        ((1, 28, 28), (32, 64)),  # MNIST: 28 -> 14 -> 7, as before
        ((3, 32, 32), (32, 64, 128)),  # -> 4
        ((1, 64, 64), (32, 64, 128, 256)),  # -> 4
        ((3, 20, 24), (32, 64)),  # -> 5 x 6
        ((3, 33, 47), (32, 64, 128)),  # odd sides -> 4 x 5
        ((1, 8, 8), (32,)),  # the smallest: -> 4
        ((3, 300, 200), (32, 64, 128, 256, 256)),  # -> 9 x 6
    ],
)
def test_conv_layers_follow_the_image_size(
    shape: tuple[int, int, int], widths: tuple[int, ...]
) -> None:
    assert conv_widths(*shape[1:]) == widths
    for kind in ("ae", "vae"):
        cfg = ModelConfig(
            kind=kind,  # type: ignore[arg-type]
            architecture="conv",
            latent_dim=3,
            hidden=(8,),
            conv_channels=tuple(min(w, 8) for w in widths),
            image_shape=shape,
        )
        model = AutoEncoder(cfg)
        logits, mu, _ = model(torch.rand(2, *shape))
        assert logits.shape == (2, math.prod(shape)) and mu.shape == (2, 3)
        end = shape[1] >> len(widths), shape[2] >> len(widths)
        assert min(end) <= CONV_END_SIDE and min(end) >= 4


def test_mlp_takes_any_size_and_colour() -> None:
    cfg = ModelConfig(architecture="mlp", latent_dim=2, hidden=(8,), image_shape=(3, 5, 7))
    logits, _, _ = AutoEncoder(cfg)(torch.rand(4, 3, 5, 7))
    assert logits.shape == (4, 105)


def test_too_small_for_the_conv_layers() -> None:
    cfg = ModelConfig(architecture="conv", conv_channels=(4, 4, 4), image_shape=(1, 7, 30))
    with pytest.raises(ValueError, match=r"at least 8x8 pixels .*got 7x30"):
        AutoEncoder(cfg)


def test_old_checkpoints_name_the_conv_widths_channels() -> None:
    old = {"kind": "vae", "architecture": "conv", "latent_dim": 2, "hidden": [8], "channels": [4]}
    assert ModelConfig.from_dict(old).conv_channels == (4,)


def test_residual_blocks_sit_on_the_smallest_map_of_both_halves() -> None:
    cfg = ModelConfig(architecture="conv", latent_dim=3, hidden=(8,), conv_channels=(4, 6))
    deep = AutoEncoder(ModelConfig(**{**cfg.to_dict(), "res_blocks": 2}))
    blocks = [m for m in deep.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 4
    assert all(b.body[1].in_channels == b.body[3].out_channels == 6 for b in blocks)
    # The blocks keep every shape: same latent and image sizes, more parameters.
    logits, mu, logvar = deep(torch.rand(2, 1, 28, 28))
    assert logits.shape == (2, 784) and mu.shape == (2, 3) and logvar is not None
    plain = sum(p.numel() for p in AutoEncoder(cfg).parameters())
    assert sum(p.numel() for p in deep.parameters()) == plain + 4 * 2 * (6 * 6 * 9 + 6)


def test_a_residual_block_adds_to_its_input() -> None:
    block = ResidualBlock(3)
    for conv in (block.body[1], block.body[3]):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(block(x), x)  # zero residual: the identity path alone


def test_checkpoints_from_before_residual_blocks_have_none() -> None:
    old = {"kind": "vae", "architecture": "conv", "latent_dim": 2, "hidden": [8]}
    assert ModelConfig.from_dict(old).res_blocks == 0
