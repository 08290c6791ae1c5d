"""The autoencoder (AE) and variational autoencoder (VAE), and their losses.

Both share one encoder/decoder body (an MLP or a small convnet). The VAE encoder has two heads,
mu and logvar: logvar is the log-variance of q(z|x), an unconstrained real number, and
sigma = exp(logvar / 2). The AE encoder has one head, the code z. Decoders return logits; the
exported decoder applies the sigmoid so that it outputs pixel means in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Kind = Literal["ae", "vae"]
Architecture = Literal["mlp", "conv"]
Likelihood = Literal["bernoulli", "gaussian"]
LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network (stored in checkpoints and the manifest)."""

    kind: Kind = "vae"
    architecture: Architecture = "mlp"
    latent_dim: int = 16
    hidden: tuple[int, ...] = (512,)
    # conv only: one stride-2 convolution per entry (see `conv_widths` for the default)
    conv_channels: tuple[int, ...] = (32, 64)
    # conv only: residual blocks on the smallest feature map, in the encoder and in the decoder
    res_blocks: int = 0
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (channels, height, width)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        # Checkpoints written before issue #17 call the conv widths `channels`.
        widths = d.get("conv_channels", d.get("channels", (32, 64)))
        return cls(
            kind=d["kind"],
            architecture=d["architecture"],
            latent_dim=int(d["latent_dim"]),
            hidden=tuple(d["hidden"]),
            conv_channels=tuple(widths),
            res_blocks=int(d.get("res_blocks", 0)),
            image_shape=tuple(d.get("image_shape", (1, 28, 28))),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


@dataclass
class _Body:
    encoder: nn.Module
    decoder: nn.Module
    features: int  # width of the encoder's last layer, where the heads attach


def _mlp_body(cfg: ModelConfig) -> _Body:
    pixels = math.prod(cfg.image_shape)
    hidden = list(cfg.hidden)
    encoder = nn.Sequential(nn.Flatten(), _mlp([pixels, *hidden]))
    decoder = nn.Sequential(_mlp([cfg.latent_dim, *hidden[::-1]]), nn.Linear(hidden[0], pixels))
    return _Body(encoder, decoder, hidden[-1])


# The conv body halves the image at each stride-2 layer until its smaller side is at most
# CONV_END_SIDE pixels: 28 -> 14 -> 7 (MNIST, two layers, as before), 32 -> 4 (three), 64 -> 4
# (four). Stopping at 4-7 px keeps the flattened feature map, which the dense layers see, at a few
# thousand values whatever the image size (its parameters grow with that map, not with the image),
# while the layers' receptive fields still cover most of the image.
CONV_END_SIDE = 7
MIN_CONV_SIDE = 8  # one stride-2 layer at least, ending on a grid of 4 or more
CONV_BASE_WIDTH = 32  # the first layer's channels; each further layer doubles them...
CONV_MAX_WIDTH = 256  # ...up to this


def conv_stages(height: int, width: int) -> int:
    """How many stride-2 layers bring the smaller side of an image down to CONV_END_SIDE or less."""
    side = min(height, width)
    stages = 1
    while math.ceil(side / 2**stages) > CONV_END_SIDE:
        stages += 1
    return stages


def conv_widths(height: int, width: int) -> tuple[int, ...]:
    """The default channels of the conv layers for an image size: 32, 64, 128, 256, 256..."""
    stages = conv_stages(height, width)
    return tuple(min(CONV_BASE_WIDTH * 2**i, CONV_MAX_WIDTH) for i in range(stages))


def conv_size_problem(height: int, width: int, stages: int) -> str | None:
    """Why `stages` stride-2 layers cannot take height x width images; None when they can."""
    smallest = max(MIN_CONV_SIDE, 2**stages)
    if min(height, width) >= smallest:
        return None
    return (
        f"the conv architecture needs images of at least {smallest}x{smallest} pixels "
        f"({stages} stride-2 layer(s) halve each side {stages} time(s)), got {height}x{width}; "
        "choose a larger --image-size, fewer --conv-channels, or --architecture mlp"
    )


def _side_sizes(side: int, stages: int) -> list[int]:
    """The side after each stride-2 layer (kernel 4, padding 1: floor(side / 2)), input first."""
    sizes = [side]
    for _ in range(stages):
        sizes.append(sizes[-1] // 2)
    return sizes


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convolutions that keep the shape: depth where the map
    is smallest, so cheap, with an identity path that keeps it easy to train (the pre-activation
    block of He et al. 2016; the ResNet VAEs of Kingma et al. 2016 stack them the same way)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _relu_after(blocks: list[ResidualBlock]) -> list[nn.Module]:
    """A ReLU of its own for each half (none without blocks)."""
    return [nn.ReLU()] if blocks else []


def _conv_body(cfg: ModelConfig) -> _Body:
    c, h, w = cfg.image_shape
    problem = conv_size_problem(h, w, len(cfg.conv_channels))
    if problem:
        raise ValueError(problem)
    chans = [c, *cfg.conv_channels]
    heights, widths = _side_sizes(h, len(cfg.conv_channels)), _side_sizes(w, len(cfg.conv_channels))
    down: list[nn.Module] = []
    for c_in, c_out in pairwise(chans):
        down += [nn.Conv2d(c_in, c_out, kernel_size=4, stride=2, padding=1), nn.ReLU()]
    end_h, end_w = heights[-1], widths[-1]
    flat = chans[-1] * end_h * end_w
    hidden = list(cfg.hidden)
    blocks_down = [ResidualBlock(chans[-1]) for _ in range(cfg.res_blocks)]
    blocks_up = [ResidualBlock(chans[-1]) for _ in range(cfg.res_blocks)]
    # After the blocks the map is a sum, not a ReLU output: activate it before the dense layers
    # and the transposed convolutions, as the plain body's maps are.
    encoder = nn.Sequential(
        *down, *blocks_down, *_relu_after(blocks_down), nn.Flatten(), _mlp([flat, *hidden])
    )

    # Each transposed layer doubles its input side (2n); output_padding adds the pixel that an
    # odd side lost to the encoder's floor(n / 2), so the decoder gives exactly C x H x W.
    up: list[nn.Module] = []
    rev = chans[::-1]
    for i, (c_in, c_out) in enumerate(pairwise(rev)):
        stage = len(rev) - 2 - i  # the encoder layer this one undoes
        extra = (heights[stage] - 2 * heights[stage + 1], widths[stage] - 2 * widths[stage + 1])
        up.append(
            nn.ConvTranspose2d(
                c_in, c_out, kernel_size=4, stride=2, padding=1, output_padding=extra
            )
        )
        if i < len(rev) - 2:
            up.append(nn.ReLU())
    decoder = nn.Sequential(
        _mlp([cfg.latent_dim, *hidden[::-1], flat]),
        nn.Unflatten(1, (chans[-1], end_h, end_w)),
        *blocks_up,
        *_relu_after(blocks_up),
        *up,
        nn.Flatten(),
    )
    return _Body(encoder, decoder, hidden[-1])


class AutoEncoder(nn.Module):
    """AE (`kind="ae"`) or VAE (`kind="vae"`) over images of `config.image_shape`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.hidden:
            raise ValueError("hidden must name at least one layer size")
        self.config = config
        body = _conv_body(config) if config.architecture == "conv" else _mlp_body(config)
        self.encoder_body = body.encoder
        self.decoder_body = body.decoder
        self.mu_head = nn.Linear(body.features, config.latent_dim)
        self.logvar_head = (
            nn.Linear(body.features, config.latent_dim) if config.kind == "vae" else None
        )

    @property
    def is_vae(self) -> bool:
        return self.logvar_head is not None

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """x (N, C, H, W) in [0, 1] -> (mu, logvar); for an AE (code, None)."""
        h = self.encoder_body(x)
        logvar = self.logvar_head(h) if self.logvar_head is not None else None
        return self.mu_head(h), logvar

    def decode_logits(self, z: Tensor) -> Tensor:
        """z (N, latent) -> Bernoulli logits / Gaussian pre-sigmoid means, flat (N, C*H*W)."""
        return self.decoder_body(z)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """One training pass: (logits, mu, logvar). The VAE samples z by reparameterisation."""
        mu, logvar = self.encode(x)
        z = mu if logvar is None else reparameterize(mu, logvar, torch.randn_like(mu))
        return self.decode_logits(z), mu, logvar


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """z = mu + sigma * eps with sigma = exp(logvar / 2) (Kingma & Welling 2013, section 2.4)."""
    return mu + torch.exp(0.5 * logvar) * eps


def kl_to_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per example, in nats.

    Closed form from Kingma & Welling 2013, appendix B: -1/2 * sum(1 + logvar - mu^2 - exp(logvar)).
    """
    return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def reconstruction_nll(
    logits: Tensor, x: Tensor, likelihood: Likelihood, gaussian_sigma: float = 0.1
) -> Tensor:
    """-log p(x | z) per example, in nats, summed over pixels.

    bernoulli: binary cross-entropy on pixel intensities (exact for binarised data; for grey
      pixels it is the usual MNIST convention, so numbers compare with the literature).
    gaussian: N(x; sigmoid(logits), sigma^2) with a fixed sigma, constant included.
    """
    target = x.flatten(1)
    if likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(dim=1)
    mean = torch.sigmoid(logits)
    per_pixel = 0.5 * ((target - mean) / gaussian_sigma).pow(2) + math.log(gaussian_sigma)
    return per_pixel.sum(dim=1) + 0.5 * LOG_2PI * target.shape[1]


@dataclass
class LossTerms:
    loss: Tensor  # scalar to minimise: mean of recon + beta * kl
    recon: Tensor  # per-example reconstruction NLL
    kl: Tensor  # per-example KL (zeros for an AE)


def loss_terms(
    model: AutoEncoder,
    x: Tensor,
    likelihood: Likelihood,
    beta: float,
    gaussian_sigma: float = 0.1,
) -> LossTerms:
    """The (beta-)VAE objective: E_q[-log p(x|z)] + beta * KL(q(z|x) || p(z)); the AE's is the
    reconstruction term alone. With beta = 1 the loss is the negative ELBO."""
    logits, mu, logvar = model(x)
    recon = reconstruction_nll(logits, x, likelihood, gaussian_sigma)
    if logvar is None:
        kl = torch.zeros_like(recon)
        return LossTerms(recon.mean(), recon, kl)
    kl = kl_to_standard_normal(mu, logvar)
    return LossTerms((recon + beta * kl).mean(), recon, kl)
