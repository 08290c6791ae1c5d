"""Between the service's images and a graph's tensors, as the manifest describes the graph.

The service holds a batch of images the way the image libraries do, (N, H, W, C) float32 with
pixels in [0, 1], and latents as (N, latent). A graph may want channels first, channels last or
flat rows, any pixel range, and may give logits or a standard deviation: `GraphAdapter` converts
both ways, and `check_signatures` refuses at load a pair of graphs whose tensors do not fit the
manifest (the rank and sizes of every tensor the service feeds or reads).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from service.manifest import FlatOrder, Layout, Manifest

Array = NDArray[np.float32]


class TensorInfo(Protocol):
    """What onnxruntime's NodeArg tells of a graph input or output."""

    @property
    def name(self) -> str: ...
    @property
    def shape(self) -> Sequence[int | str | None]: ...
    @property
    def type(self) -> str: ...


def graph_shape(layout: Layout, flat_order: FlatOrder, chw: tuple[int, int, int]) -> list[int]:
    """One image's shape in a graph tensor of `layout` (without the batch axis)."""
    c, h, w = chw
    if layout == "NCHW":
        return [c, h, w]
    if layout == "NHWC":
        return [h, w, c]
    return [c * h * w]


def to_layout(images: Array, layout: Layout, flat_order: FlatOrder) -> Array:
    """(N, H, W, C) -> the graph's layout, contiguous (onnxruntime copies a strided array)."""
    if layout == "NHWC" or (layout == "flat" and flat_order == "HWC"):
        out = images if layout == "NHWC" else images.reshape(len(images), -1)
    else:
        chw = images.transpose(0, 3, 1, 2)
        out = chw if layout == "NCHW" else chw.reshape(len(images), -1)
    return np.ascontiguousarray(out)


def from_layout(
    tensor: Array, layout: Layout, flat_order: FlatOrder, chw: tuple[int, int, int]
) -> Array:
    """The graph's layout -> (N, H, W, C)."""
    c, h, w = chw
    n = len(tensor)
    if layout == "NHWC":
        return tensor
    if layout == "NCHW":
        return tensor.transpose(0, 2, 3, 1)
    if flat_order == "HWC":
        return tensor.reshape(n, h, w, c)
    return tensor.reshape(n, c, h, w).transpose(0, 2, 3, 1)


@dataclass(frozen=True)
class GraphAdapter:
    """The conversions a manifest asks for, both ways."""

    manifest: Manifest

    @property
    def chw(self) -> tuple[int, int, int]:
        return self.manifest.input.shape

    def encoder_input(self, images: Array) -> Array:
        """(N, H, W, C) pixels in [0, 1] -> the encoder's input tensor."""
        spec = self.manifest.input
        low, high = spec.pixel_range
        if (low, high) != (0.0, 1.0):
            images = (images * np.float32(high - low) + np.float32(low)).astype(np.float32)
        return to_layout(images, spec.layout, spec.flat_order)

    def logvar(self, variance: Array) -> Array:
        """The encoder's variance output, whatever it holds -> a log-variance."""
        kind = self.manifest.latent.variance
        if kind == "log_sigma":
            return (2.0 * variance).astype(np.float32)
        if kind == "sigma":
            # A sigma of 0 (a ReLU'd output) would be a log-variance of -inf: floored at the
            # smallest normal float32, whose log-variance (-174.7) still exponentiates to 0.
            tiny = np.finfo(np.float32).tiny
            return (2.0 * np.log(np.maximum(variance, tiny))).astype(np.float32)
        return variance

    def images(self, decoded: Array) -> Array:
        """The decoder's image output -> (N, H, W, C) pixels in [0, 1]."""
        out = self.manifest.output
        if out.activation == "sigmoid":
            # exp of a large negative logit overflows to inf in float32, and 1 / (1 + inf) is
            # the right 0; numpy would warn about it.
            with np.errstate(over="ignore"):
                decoded = (1.0 / (1.0 + np.exp(-decoded))).astype(np.float32)
        low, high = self.manifest.decoder.output_range or (0.0, 1.0)
        if (low, high) != (0.0, 1.0):
            decoded = ((decoded - np.float32(low)) / np.float32(high - low)).astype(np.float32)
            np.clip(decoded, 0.0, 1.0, out=decoded)
        return from_layout(decoded, out.layout, out.flat_order, self.chw)


def _fits(actual: Sequence[int | str | None], wanted: list[int]) -> bool:
    """A graph tensor's shape against [batch, *wanted]: same rank, and each fixed size equal
    (a named or unknown axis takes any size)."""
    if len(actual) != 1 + len(wanted):
        return False
    return all(not isinstance(a, int) or a == w for a, w in zip(actual[1:], wanted, strict=True))


def _batch_axis_fixed(actual: Sequence[int | str | None]) -> bool:
    return bool(actual) and isinstance(actual[0], int) and actual[0] != -1


def _shape_text(shape: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def signature_problems(
    manifest: Manifest, encoder: Sequence[TensorInfo], decoder: Sequence[TensorInfo]
) -> list[tuple[str, str]]:
    """Every way the graphs' tensors do not fit the manifest, as (graph, problem) pairs, graph
    "encoder" or "decoder". `encoder` and `decoder` are each graph's inputs then outputs."""
    problems: list[tuple[str, str]] = []
    chw = manifest.input.shape
    c, h, w = chw
    latent = manifest.latent_dim
    by_name = {("encoder", t.name): t for t in encoder} | {("decoder", t.name): t for t in decoder}

    def check(graph: str, name: str, wanted: list[int], what: str, fix: str) -> None:
        tensor = by_name.get((graph, name))
        if tensor is None:
            names = [t.name for t in (encoder if graph == "encoder" else decoder)]
            problems.append(
                (graph, f"has no tensor {name!r}; its inputs and outputs are {names}: name "
                 "one of them in the manifest")
            )
            return
        if tensor.type != "tensor(float)":
            problems.append(
                (
                    graph,
                    f"{name!r} is {tensor.type}; the service feeds and reads "
                    "float32 (tensor(float)): export the graph in float32",
                )
            )
            return
        if (
            _batch_axis_fixed(tensor.shape)
            and tensor.shape[0] != 1
            or not _fits(tensor.shape, wanted)
        ):
            problems.append(
                (
                    graph,
                    f"{name!r} is {_shape_text(tensor.shape)}, but {what} "
                    f"needs [batch, {', '.join(map(str, wanted))}]; {fix}",
                )
            )
        elif _batch_axis_fixed(tensor.shape):
            problems.append(
                (
                    graph,
                    f"{name!r} has a fixed batch size of 1 "
                    f"({_shape_text(tensor.shape)}); export it with a dynamic batch "
                    "axis (torch.onnx.export with dynamic_shapes and an example batch "
                    "of 2 or more)",
                )
            )

    spec = manifest.input
    size = f"{c} x {h} x {w}"
    check(
        "encoder",
        manifest.encoder.inputs[0].name,
        graph_shape(spec.layout, spec.flat_order, chw),
        f"a {spec.layout} input of {size} images",
        "set input.layout and input.shape (channels, height, width) in the manifest to what the "
        "graph takes (the importer: --input-layout, --image-shape C,H,W)",
    )
    check(
        "encoder",
        manifest.latent.code_output,
        [latent],
        f"latent_dim {latent}",
        "set latent.code_output to the encoder's mean (or code) output and latent_dim to its "
        "size",
    )
    if manifest.latent.logvar_output is not None:
        check(
            "encoder",
            manifest.latent.logvar_output,
            [latent],
            f"latent_dim {latent}",
            "set latent.logvar_output to the encoder's variance output; it must match the mean's "
            "size",
        )
    check(
        "decoder",
        manifest.decoder.inputs[0].name,
        [latent],
        f"latent_dim {latent}",
        f"the decoder must take the encoder's {latent} latent values per image",
    )
    out = manifest.output
    check(
        "decoder",
        manifest.image_output,
        graph_shape(out.layout, out.flat_order, chw),
        f"a {out.layout} output of the encoder's {size} images",
        "the decoder must give back images of the encoder's size and channels; set output.layout "
        "(and output.tensor) in the manifest to what it gives (the importer: --output-layout)",
    )
    return problems
