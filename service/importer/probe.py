"""What the importer learns by running the two graphs: the decoder's value range (probabilities,
logits or another range), the images' background, and whether the pair works together on a few
inputs as the service will feed it (batches of 1 and 3, black and random images, prior samples).

Inputs are built and outputs read with the service's own `GraphAdapter`, so a pair that passes
here is converted exactly as it will be served.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from service.codecs.images import light_background
from service.importer.graphs import Graph, ImportRefused, first_line
from service.manifest import Background, Manifest
from service.models.adapter import GraphAdapter, graph_shape

Array = NDArray[np.float32]
SEED = 0
PRIOR_SAMPLES = 256  # decoded prior samples that judge the value range and the background
CHUNK = 32  # rows per decoder call: a large model's 256 images need not be in memory at once
CHECK_BATCHES = (1, 3)
# float32 arithmetic rounds: a sigmoid's 1.0 may come out as 1.0000001.
RANGE_TOLERANCE = 1e-4


def run(graph: Graph, outputs: list[str], feed: Array, what: str) -> list[Array]:
    """Run `graph` on `feed`; a failure is refused with the graph, the input and the fix."""
    tensor = graph.inputs[0]
    try:
        return list(graph.session.run(outputs, {tensor.name: feed}))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ImportRefused(
            f"{graph.flag} {graph.path} fails when run on {what} ({tensor.name!r} "
            f"{list(feed.shape)}): {first_line(exc)}; the service runs it on any batch size: "
            "export it with a dynamic batch axis, and check it runs with onnxruntime"
        ) from exc


def check_tensor(graph: Graph, name: str, value: Array, shape: list[int], what: str) -> None:
    """An output's dtype, shape and values: float32, as declared, finite."""
    where = f"{graph.flag} {graph.path}: {name!r}"
    if value.dtype != np.float32:
        raise ImportRefused(
            f"{where} is {value.dtype} when run on {what}; the service reads float32: export "
            "the graph in float32"
        )
    if list(value.shape) != shape:
        raise ImportRefused(
            f"{where} is {list(value.shape)} when run on {what}, not {shape}: its declared "
            "shape does not hold; export the graph with its true output shape"
        )
    if not np.isfinite(value).all():
        raise ImportRefused(
            f"{where} holds NaN or infinity when run on {what}; the service cannot serve it: "
            "check the exported graph (a log or a division of zero, an overflow)"
        )


def prior_samples(latent: int, n: int = PRIOR_SAMPLES) -> Array:
    return np.random.default_rng(SEED).standard_normal((n, latent)).astype(np.float32)


def _decoded_chunks(manifest: Manifest, decoder: Graph, z: Array) -> Iterator[Array]:
    """The decoder's raw image output for `z`, CHUNK rows at a time, each checked."""
    name = manifest.image_output
    out = manifest.output
    per_image = graph_shape(out.layout, out.flat_order, manifest.input.shape)
    for start in range(0, len(z), CHUNK):
        rows = z[start : start + CHUNK]
        what = f"{len(z)} latent vectors drawn from N(0, I)"
        [decoded] = run(decoder, [name], rows, what)
        check_tensor(decoder, name, decoded, [len(rows), *per_image], what)
        yield decoded


def decoder_value_range(manifest: Manifest, decoder: Graph) -> tuple[float, float]:
    """The least and greatest value of the decoder's raw image output on prior samples."""
    low, high = np.inf, -np.inf
    for decoded in _decoded_chunks(manifest, decoder, prior_samples(manifest.latent_dim)):
        low, high = min(low, float(decoded.min())), max(high, float(decoded.max()))
    return low, high


OutputKind = Literal["logits", "probabilities"]


@dataclass(frozen=True)
class DecoderValues:
    """How the service reads the decoder's values back into pixels in [0, 1]."""

    activation: Literal["none", "sigmoid"]
    output_range: tuple[float, float] | None
    how: str  # for the summary


def decoder_values(
    name: str,
    seen: tuple[float, float],
    output: OutputKind | None,
    output_range: tuple[float, float] | None,
) -> DecoderValues:
    """The flags, else the values seen: within [0, 1], probabilities; else refused, with the
    flags that say what the values are."""
    low, high = seen
    values = f"values {low:.3g} .. {high:.3g} on {PRIOR_SAMPLES} latents drawn from N(0, I)"
    if output is not None and output_range is not None:
        raise ImportRefused(
            "--output and --output-range both say what the decoder gives: pass one (--output "
            "logits for logits, --output-range LO,HI for pixels in another range)"
        )
    if output == "logits":
        return DecoderValues("sigmoid", None, f"logits (--output logits; {values})")
    if output == "probabilities":
        return DecoderValues("none", None, f"probabilities (--output probabilities; {values})")
    if output_range is not None:
        lo, hi = output_range
        return DecoderValues("none", output_range, f"pixels in [{lo:g}, {hi:g}] ({values})")
    if low >= -RANGE_TOLERANCE and high <= 1 + RANGE_TOLERANCE:
        return DecoderValues("none", None, f"probabilities ({values})")
    hints = ["--output logits if they are logits (the service applies the sigmoid)"]
    if low >= -1 - RANGE_TOLERANCE and high <= 1 + RANGE_TOLERANCE:
        hints.append("--output-range=-1,1 if it ends in a tanh")
    elif low >= -RANGE_TOLERANCE and high <= 255 + RANGE_TOLERANCE:
        hints.append("--output-range=0,255 for 8-bit pixel values")
    hints.append("--output probabilities to serve the values as they are")
    raise ImportRefused(
        f"the decoder's {name!r} gives {values}: outside [0, 1], so not probabilities (likely "
        f"logits). Pass {'; '.join(hints)}"
    )


def judge_background(manifest: Manifest, decoder: Graph) -> Background:
    """The background of the model's images, as training/export.py judges it without the data:
    that of most images the decoder draws from the prior (their border, `light_background`)."""
    adapter = GraphAdapter(manifest)
    light = 0
    for decoded in _decoded_chunks(manifest, decoder, prior_samples(manifest.latent_dim)):
        images = adapter.images(decoded).transpose(0, 3, 1, 2)  # (N, C, H, W): border of each
        light += int(light_background(images).sum())
    return "light" if 2 * light > PRIOR_SAMPLES else "dark"


def _test_images(n: int, chw: tuple[int, int, int]) -> Iterator[tuple[str, Array]]:
    """Black images and random pixels in [0, 1], (N, H, W, C) as the service holds them."""
    c, h, w = chw
    yield f"a batch of {n} black images", np.zeros((n, h, w, c), dtype=np.float32)
    pixels = np.random.default_rng(SEED + n).random((n, h, w, c), dtype=np.float32)
    yield f"a batch of {n} images of random pixels", pixels


def check_pair(manifest: Manifest, encoder: Graph, decoder: Graph, clip_expected: bool) -> float:
    """Run both graphs as the service will, on batches of 1 and 3 of black and random images and
    on prior samples: every tensor float32, of its shape, finite; the variance output what the
    manifest says; the images in [0, 1] unless `clip_expected`. Returns the least value the
    variance output gave (0 for an AE)."""
    adapter = GraphAdapter(manifest)
    latent, latent_dim = manifest.latent, manifest.latent_dim
    names = [latent.code_output, *([latent.logvar_output] if latent.logvar_output else [])]
    image_name = manifest.image_output
    out = manifest.output
    per_image = graph_shape(out.layout, out.flat_order, manifest.input.shape)
    variance_low = np.inf
    for n in CHECK_BATCHES:
        for what, images in _test_images(n, manifest.input.shape):
            outputs = run(encoder, names, adapter.encoder_input(images), what)
            for name, value in zip(names, outputs, strict=True):
                check_tensor(encoder, name, value, [n, latent_dim], what)
            if len(outputs) > 1:
                variance_low = min(variance_low, float(outputs[1].min()))
                _check_logvar(encoder, names[1], manifest, adapter.logvar(outputs[1]), what)
            prior = f"{n} latent vectors drawn from N(0, I)"
            for z, source in (
                (outputs[0], f"the means of {what}"),
                (prior_samples(latent_dim, n), prior),
            ):
                [decoded] = run(decoder, [image_name], z, source)
                check_tensor(decoder, image_name, decoded, [n, *per_image], source)
                if not clip_expected:
                    _check_pixels(decoder, image_name, adapter.images(decoded), source)
    return float(variance_low) if names[1:] else 0.0


def _check_logvar(encoder: Graph, name: str, manifest: Manifest, logvar: Array, what: str) -> None:
    if not np.isfinite(logvar).all():
        raise ImportRefused(
            f"{encoder.flag} {encoder.path}: {name!r} read as a {manifest.latent.variance} gives "
            f"a log-variance of NaN or infinity on {what}: pass the --variance it holds "
            "(logvar, log_sigma or sigma)"
        )


def _check_pixels(decoder: Graph, name: str, pixels: Array, what: str) -> None:
    low, high = float(pixels.min()), float(pixels.max())
    if low < -RANGE_TOLERANCE or high > 1 + RANGE_TOLERANCE:
        raise ImportRefused(
            f"{decoder.flag} {decoder.path}: {name!r} gives pixels {low:.3g} .. {high:.3g} on "
            f"{what}, outside [0, 1] once read as the flags say: pass --output logits or "
            "--output-range LO,HI for what it really gives"
        )
