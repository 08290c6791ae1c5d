"""Encoder and decoder ONNX files written the way other frameworks and users write them, with
plain torch: the models the importer and the service must take as they are.

Each style is a small untrained network with fixed random weights (the seed), exported with
torch's TorchScript exporter under the names and layouts that framework's exporters choose:
- `keras_flat`: a Keras MLP VAE through tf2onnx: flat [N, 784] input `input_1`, outputs
  `z_mean`, `z_log_var` and a sampled `z`; decoder `z_sampling` -> flat [N, 784] `dense_3`
  (sigmoid probabilities).
- `keras_nhwc`: a Keras conv VAE: channels-last [N, 28, 28, 1] input and output, exporter names
  with colons (`StatefulPartitionedCall:0`...), a sampled `z` output in the middle.
- `logits_ae`: a PyTorch AE whose decoder ends in logits, NCHW.
- `color_vae`: a PyTorch conv VAE on 3 x 32 x 32 RGB images, NCHW.
- `gray64_vae`: a PyTorch conv VAE on 1 x 64 x 64 images, NCHW, its variance output a sigma
  (softplus), named `sigma`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

LATENT = 4


@dataclass(frozen=True)
class Style:
    """What a style's graphs are, as a person importing them would know it."""

    name: str
    kind: str  # "ae" or "vae"
    chw: tuple[int, int, int]
    input_name: str
    encoder_outputs: list[str]  # in the graph's order
    mean: str
    variance: str | None  # the variance output's name
    variance_kind: str  # "logvar", "log_sigma" or "sigma"
    decoder_input: str
    decoder_output: str
    input_layout: str  # NCHW, NHWC or flat
    output_layout: str
    logits: bool  # the decoder gives logits, not probabilities
    ignored: list[str] = field(default_factory=list)  # encoder outputs the service should ignore


class _Encoder(nn.Module):
    def __init__(self, style: Style, body: nn.Module, features: int) -> None:
        super().__init__()
        self.style = style
        self.body = body
        self.mean = nn.Linear(features, LATENT)
        self.var = nn.Linear(features, LATENT) if style.kind == "vae" else None

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        if self.style.input_layout == "NHWC":  # a conv body: channels first, as torch wants
            x = x.permute(0, 3, 1, 2)
        h = self.body(x)  # a flat input goes to an MLP body as it is
        mu = self.mean(h)
        if self.var is None:
            return (mu,)
        raw = self.var(h)
        variance = (
            nn.functional.softplus(raw) + 1e-3 if self.style.variance_kind == "sigma" else raw
        )
        sampled = mu + torch.randn_like(mu) * torch.exp(0.5 * raw)
        outputs = {self.style.mean: mu, self.style.variance: variance, "z": sampled}
        return tuple(outputs[name] for name in self.style.encoder_outputs)


class _Decoder(nn.Module):
    def __init__(self, style: Style) -> None:
        super().__init__()
        self.style = style
        c, h, w = style.chw
        self.net = nn.Sequential(nn.Linear(LATENT, 32), nn.Tanh(), nn.Linear(32, c * h * w))

    def forward(self, z: Tensor) -> Tensor:
        c, h, w = self.style.chw
        x = self.net(z)
        if not self.style.logits:
            x = torch.sigmoid(x)
        chw = x.reshape(-1, c, h, w)
        if self.style.output_layout == "NHWC":
            return chw.permute(0, 2, 3, 1)
        if self.style.output_layout == "flat":
            return chw.permute(0, 2, 3, 1).reshape(-1, c * h * w)
        return chw


def _conv_body(c: int, h: int, w: int) -> tuple[nn.Module, int]:
    body = nn.Sequential(
        nn.Conv2d(c, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
    )
    return body, 8 * ((h + 3) // 4) * ((w + 3) // 4)


STYLES = {
    s.name: s
    for s in (
        Style(
            "keras_flat",
            "vae",
            (1, 28, 28),
            "input_1",
            ["z_mean", "z_log_var", "z"],
            "z_mean",
            "z_log_var",
            "logvar",
            "z_sampling",
            "dense_3",
            "flat",
            "flat",
            False,
            ["z"],
        ),
        Style(
            "keras_nhwc",
            "vae",
            (1, 28, 28),
            "input_layer",
            ["StatefulPartitionedCall:0", "z", "StatefulPartitionedCall:1"],
            "StatefulPartitionedCall:0",
            "StatefulPartitionedCall:1",
            "logvar",
            "input_layer_1",
            "conv2d_transpose_2",
            "NHWC",
            "NHWC",
            False,
            ["z"],
        ),
        Style(
            "logits_ae",
            "ae",
            (1, 28, 28),
            "x",
            ["code"],
            "code",
            None,
            "logvar",
            "code",
            "logits",
            "NCHW",
            "NCHW",
            True,
        ),
        Style(
            "color_vae",
            "vae",
            (3, 32, 32),
            "image",
            ["mu", "logvar"],
            "mu",
            "logvar",
            "logvar",
            "z",
            "recon",
            "NCHW",
            "NCHW",
            False,
        ),
        Style(
            "gray64_vae",
            "vae",
            (1, 64, 64),
            "x",
            ["mu", "sigma"],
            "mu",
            "sigma",
            "sigma",
            "z",
            "x_hat",
            "NCHW",
            "NCHW",
            False,
        ),
    )
}


def export_style(style: Style | str, folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write `folder/encoder.onnx` and `folder/decoder.onnx` in `style`; returns both paths."""
    style = STYLES[style] if isinstance(style, str) else style
    torch.manual_seed(seed)
    c, h, w = style.chw
    if style.input_layout == "flat":
        body: nn.Module = nn.Sequential(nn.Linear(c * h * w, 32), nn.ReLU())
        features = 32
        example = torch.rand(2, c * h * w)
    else:
        body, features = _conv_body(c, h, w)
        example = torch.rand(2, h, w, c) if style.input_layout == "NHWC" else torch.rand(2, c, h, w)
    encoder = _Encoder(style, body, features)
    decoder = _Decoder(style)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "encoder.onnx", folder / "decoder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder.eval(),
            (example,),
            str(paths[0]),
            input_names=[style.input_name],
            output_names=style.encoder_outputs,
            dynamic_axes={style.input_name: {0: "N"}},
            dynamo=False,
            opset_version=17,
        )
        torch.onnx.export(
            decoder.eval(),
            (torch.zeros(2, LATENT),),
            str(paths[1]),
            input_names=[style.decoder_input],
            output_names=[style.decoder_output],
            dynamic_axes={style.decoder_input: {0: "N"}},
            dynamo=False,
            opset_version=17,
        )
    return paths


class Reference:
    """A style's two ONNX files run directly with onnxruntime, with the conversions written out by
    hand (not by the service's adapter): what the service's answers are checked against."""

    def __init__(self, style: Style | str, encoder: Path, decoder: Path) -> None:
        self.style = STYLES[style] if isinstance(style, str) else style
        self.encoder = ort.InferenceSession(str(encoder), providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(decoder), providers=["CPUExecutionProvider"])

    @classmethod
    def in_folder(cls, folder: Path, style: Style | str) -> Reference:
        return cls(style, folder / "encoder.onnx", folder / "decoder.onnx")

    def encode(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, H, W, C) in [0, 1] -> mu and a log-variance (None for an AE)."""
        s = self.style
        feed = {
            "NCHW": images.transpose(0, 3, 1, 2),
            "NHWC": images,
            "flat": images.reshape(len(images), -1),
        }[s.input_layout]
        wanted = [s.mean] + ([s.variance] if s.variance else [])
        outputs = self.encoder.run(wanted, {s.input_name: np.ascontiguousarray(feed)})
        if s.variance is None:
            return outputs[0], None
        variance = outputs[1]
        return outputs[0], 2 * np.log(variance) if s.variance_kind == "sigma" else variance

    def decode(self, z: np.ndarray) -> np.ndarray:
        """(N, latent) -> (N, H, W, C) in [0, 1]."""
        s = self.style
        c, h, w = s.chw
        [out] = self.decoder.run([s.decoder_output], {s.decoder_input: z})
        if s.logits:
            out = 1 / (1 + np.exp(-out))
        if s.output_layout == "NCHW":
            return out.transpose(0, 2, 3, 1)
        return out.reshape(len(z), h, w, c)


def public(images: np.ndarray) -> np.ndarray:
    """(..., H, W, C) -> what clients send and get: grayscale without its channel axis."""
    return images[..., 0] if images.shape[-1] == 1 else images


def pictures(style: str, n: int, seed: int = 0) -> np.ndarray:
    """n random (N, H, W, C) images of `style`'s shape on 8-bit levels (PNG holds them exactly)."""
    c, h, w = STYLES[style].chw
    levels = np.random.default_rng(seed).integers(0, 256, (n, h, w, c))
    return (levels / 255).astype(np.float32)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def close(actual: object, expected: np.ndarray, atol: float = 2e-5) -> None:
    """The service's numbers against the reference's (float32 arithmetic in other orders)."""
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=1e-4, atol=atol)
