"""What the importer reads from the two graphs without running them: their tensors, the image
layout each uses, the latent size, and which encoder outputs are the mean and the variance.

Everything here works on onnxruntime's description of a graph (names, shapes, types) and on the
names exporters give tensors; a question these cannot settle is refused with `ImportRefused`,
whose message names the flag that settles it.
"""

from __future__ import annotations

import math
import mmap
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnxruntime as ort

from service.manifest import Layout, Variance

Dim = int | str | None
Role = Literal["mean", "variance", "sample"]


class ImportRefused(Exception):
    """The pair cannot be imported as asked; the message says why and what to pass instead."""


@dataclass(frozen=True)
class Tensor:
    """A graph input or output as onnxruntime describes it (also `adapter.TensorInfo`)."""

    name: str
    shape: tuple[Dim, ...]
    type: str

    @property
    def text(self) -> str:
        """`'name' [N, 1, 28, 28]`, unknown sizes as `?`."""
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name!r} [{dims}]"


@dataclass(frozen=True)
class Graph:
    """One ONNX file, opened."""

    path: Path
    flag: str  # --encoder or --decoder: how the user named it
    session: ort.InferenceSession
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    opset: int
    producer: str

    def output(self, name: str) -> Tensor:
        return next(t for t in self.outputs if t.name == name)

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def _tensors(args: Sequence[ort.NodeArg]) -> tuple[Tensor, ...]:
    return tuple(Tensor(a.name, tuple(a.shape), a.type) for a in args)


def open_graph(path: Path, flag: str) -> Graph:
    """Open `path` with onnxruntime on the CPU; refuse a missing or unreadable file, and a graph
    with more than one input (the service feeds one tensor: images, or latent vectors)."""
    if not path.is_file():
        raise ImportRefused(f"{flag} {path}: no such file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # onnxruntime's warnings are not the user's problem here
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise ImportRefused(
            f"{flag} {path} is not an ONNX graph onnxruntime can load ({first_line(exc)}); "
            "pass the .onnx file your exporter wrote"
        ) from exc
    opset, producer = read_model_header(path)
    graph = Graph(
        path,
        flag,
        session,
        _tensors(session.get_inputs()),
        _tensors(session.get_outputs()),
        opset,
        producer,
    )
    if len(graph.inputs) != 1:
        names = [t.name for t in graph.inputs]
        raise ImportRefused(
            f"{flag} {path} takes {len(names)} inputs {names}; the service feeds one (the "
            "images to the encoder, the latent vectors to the decoder): export the graph with one"
        )
    return graph


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the ONNX file's header, read without the `onnx` package (the service does not have it) ---


def _varint(data: mmap.mmap | bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(data: mmap.mmap | bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The protobuf fields between `start` and `end`: (number, wire type, value or offset,
    length); length-delimited values are not read, only located."""
    found = []
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            found.append((number, wire, value, 0))
        elif wire == 2:
            length, pos = _varint(data, pos)
            found.append((number, wire, pos, length))
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
    return found


def read_model_header(path: Path) -> tuple[int, str]:
    """The default-domain opset and the producer ("pytorch 2.5.1") of an ONNX file, from the
    ModelProto's top-level fields (opset_import = 8, producer_name = 2, producer_version = 3);
    (0, "") when the file does not parse so (onnxruntime has already read it)."""
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            opset, producer = 0, {2: "", 3: ""}
            for number, wire, offset, length in _fields(data, 0, len(data)):
                if wire != 2:
                    continue
                if number in producer:
                    text = bytes(data[offset : offset + length])
                    producer[number] = text.decode(errors="replace")
                elif number == 8:
                    entry = {n: (o, ln) for n, _, o, ln in _fields(data, offset, offset + length)}
                    domain = entry.get(1)
                    name = bytes(data[domain[0] : domain[0] + domain[1]]) if domain else b""
                    if name in (b"", b"ai.onnx") and 2 in entry:
                        opset = max(opset, entry[2][0])
            return opset, f"{producer[2]} {producer[3]}".strip()
    except (OSError, ValueError, IndexError):
        return 0, ""


# --- image layouts ---

CHANNELS = (1, 3)
LAYOUT_FLAGS = {"encoder": "--input-layout", "decoder": "--output-layout"}


@dataclass(frozen=True)
class ImageTensor:
    """How one graph tensor holds images: its layout and what its shape tells of one image."""

    tensor: Tensor
    layout: Layout
    chw: tuple[Dim, Dim, Dim] | None  # for NCHW / NHWC (a size may be unknown)
    flat_size: Dim  # for flat


def image_layout(tensor: Tensor, graph: str, override: Layout | None) -> ImageTensor:
    """The layout of an image tensor: `override`, or from its rank and which axis holds 1 or 3
    (the channels). `graph` is "encoder" (its input) or "decoder" (its image output)."""
    flag = LAYOUT_FLAGS[graph]
    dims = tensor.shape[1:]
    rank = len(tensor.shape)
    if override is not None and rank != (2 if override == "flat" else 4):
        raise ImportRefused(
            f"{flag} {override}: the {graph}'s {tensor.text} has rank {rank}, and {override} "
            f"images are {'[N, C*H*W]' if override == 'flat' else '[N, 4 axes]'}"
        )
    if rank == 2:
        return ImageTensor(tensor, "flat", None, dims[0])
    if rank != 4:
        raise ImportRefused(
            f"the {graph}'s {tensor.text} is not a batch of images as the service can feed or "
            "read them: [N, C, H, W] (NCHW), [N, H, W, C] (NHWC) or [N, C*H*W] (flat), channels "
            "1 or 3. A grayscale graph of [N, H, W]: export it with a channel axis, or flat"
        )
    first, middle, last = dims
    layout = override
    if layout is None:
        first_is_channels, last_is_channels = first in CHANNELS, last in CHANNELS
        if first_is_channels != last_is_channels:
            layout = "NCHW" if first_is_channels else "NHWC"
        elif isinstance(first, int) and isinstance(last, int) and not first_is_channels:
            raise ImportRefused(
                f"the {graph}'s {tensor.text} has no axis of 1 or 3 channels (grayscale or RGB) "
                "first or last; the service serves grayscale and RGB images only"
            )
        else:
            raise ImportRefused(
                f"the {graph}'s {tensor.text}: cannot tell whether its channels come first or "
                f"last; pass {flag} NCHW or {flag} NHWC"
            )
    chw = (first, middle, last) if layout == "NCHW" else (last, first, middle)
    return ImageTensor(tensor, layout, chw, None)


def _known_chw(image: ImageTensor) -> tuple[int, int, int] | None:
    if image.chw is None or not all(isinstance(d, int) and d > 0 for d in image.chw):
        return None
    c, h, w = image.chw
    assert isinstance(c, int) and isinstance(h, int) and isinstance(w, int)
    return c, h, w


def square_guess(size: Dim) -> str:
    """For a flat size, the square grayscale or RGB image it could be ("1,28,28"), or ""."""
    if not isinstance(size, int):
        return ""
    for channels in CHANNELS:
        side = math.isqrt(size // channels)
        if size % channels == 0 and side * side * channels == size:
            return f"{channels},{side},{side}"
    return ""


def image_shape(
    encoder: ImageTensor, decoder: ImageTensor, given: tuple[int, int, int] | None
) -> tuple[tuple[int, int, int], str]:
    """(channels, height, width) of the model's images and where it came from: --image-shape,
    else the encoder's input, else the decoder's output (whichever has all three sizes)."""
    if given is not None:
        return given, "--image-shape"
    for graph, image in (("encoder's input", encoder), ("decoder's output", decoder)):
        chw = _known_chw(image)
        if chw is not None:
            return chw, f"the {graph}"
    flat = encoder if encoder.layout == "flat" else decoder
    guess = square_guess(flat.flat_size) if flat.layout == "flat" else ""
    hint = f" (square images of {flat.flat_size} values: --image-shape {guess})" if guess else ""
    what = "flat" if flat.layout == "flat" else "of unknown height or width"
    raise ImportRefused(
        f"the images' shape is not in the graphs: the encoder's {encoder.tensor.text} is {what}; "
        f"pass --image-shape C,H,W (channels 1 or 3){hint}"
    )


# --- the latent: its size, and which encoder outputs are the mean and the variance ---


def latent_size(encoder: Graph, decoder: Graph) -> int:
    """The decoder's input size, [N, L]."""
    tensor = decoder.inputs[0]
    if len(tensor.shape) != 2:
        raise ImportRefused(
            f"the decoder's input {tensor.text} is not a batch of latent vectors [N, latent_dim]: "
            f"export the decoder {decoder.path} with a [N, latent_dim] input"
        )
    size = tensor.shape[1]
    if not isinstance(size, int) or size < 1:
        raise ImportRefused(
            f"the decoder's input {tensor.text} has no fixed latent size: export the decoder "
            f"{decoder.path} with a fixed one"
        )
    return size


def _words(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def name_role(name: str) -> Role | None:
    """What an encoder output's name says it holds: the mean (mu, mean, z_mean, loc), the
    variance (logvar, z_log_var, log_sigma, sigma, std, scale), a sample (z, sampled), or
    nothing (`StatefulPartitionedCall:0`)."""
    words = _words(name.rsplit("/", 1)[-1])
    if words in ("z", "sample", "sampled", "zsample", "zsampled", "sampling", "eps", "noise"):
        return "sample"
    if any(k in words for k in ("logvar", "var", "sigma", "std", "scale")):
        return "variance"
    if words.endswith(("mean", "mu", "loc", "means")):
        return "mean"
    return None


def variance_from_name(name: str) -> Variance | None:
    """What a variance output's name says it holds, or None when it does not say."""
    words = _words(name.rsplit("/", 1)[-1])
    if "logvar" in words:
        return "logvar"
    if any(k in words for k in ("logsigma", "logstd", "logscale")):
        return "log_sigma"
    if any(k in words for k in ("sigma", "std", "scale")):
        return "sigma"
    return None


@dataclass(frozen=True)
class LatentOutputs:
    kind: Literal["ae", "vae"]
    mean: str
    variance: str | None
    how: str  # how they were told apart, for the summary
    ignored: list[str]  # encoder outputs the service will not read


def _check_named(name: str | None, flag: str, encoder: Graph) -> None:
    if name is not None and name not in encoder.output_names:
        raise ImportRefused(
            f"{flag} {name!r}: the encoder has no such output; its outputs are "
            f"{encoder.output_names}"
        )


def _latent_candidates(encoder: Graph, latent: int) -> list[str]:
    """Encoder outputs shaped like the latent, [N, latent] (an unknown size counts)."""
    return [
        t.name
        for t in encoder.outputs
        if len(t.shape) == 2 and (t.shape[1] == latent or not isinstance(t.shape[1], int))
    ]


def latent_outputs(
    encoder: Graph,
    latent: int,
    kind: Literal["ae", "vae"] | None,
    mean: str | None,
    variance: str | None,
) -> LatentOutputs:
    """Which encoder outputs the service reads: the flags, else the names, else the position
    (two outputs of the latent's shape: the first is the mean)."""
    _check_named(mean, "--mean", encoder)
    _check_named(variance, "--logvar", encoder)
    candidates = _latent_candidates(encoder, latent)
    if not candidates and mean is None:
        shapes = ", ".join(t.text for t in encoder.outputs)
        raise ImportRefused(
            f"no encoder output is [N, {latent}], the latent size the decoder takes: the "
            f"encoder's outputs are {shapes}. The decoder must take the latent vectors the "
            "encoder gives: import the decoder trained with this encoder"
        )
    if kind is None:
        kind = "vae" if variance is not None or len(candidates) >= 2 else "ae"
    if kind == "ae":
        if variance is not None:
            raise ImportRefused("--logvar names a variance output, but --kind ae has none")
        mean, how = _ae_code(candidates, mean)
        return LatentOutputs("ae", mean, None, how, _others(encoder, [mean]))
    mean, variance, how = _vae_pair(candidates, mean, variance, latent)
    return LatentOutputs("vae", mean, variance, how, _others(encoder, [mean, variance]))


def _others(encoder: Graph, used: list[str]) -> list[str]:
    return [name for name in encoder.output_names if name not in used]


def _ae_code(candidates: list[str], mean: str | None) -> tuple[str, str]:
    if mean is not None:
        return mean, "--mean"
    if len(candidates) == 1:
        return candidates[0], "its only output of the latent's shape"
    means = [c for c in candidates if name_role(c) == "mean"]
    if len(means) == 1:
        return means[0], "by name"
    raise ImportRefused(
        f"the encoder has {len(candidates)} outputs of the latent's shape {candidates}; an "
        "autoencoder's code is one: pass --mean NAME for the code"
    )


def _vae_pair(
    candidates: list[str], mean: str | None, variance: str | None, latent: int
) -> tuple[str, str, str]:
    how = "by name"
    if mean is not None or variance is not None:
        how = "--mean/--logvar" if mean is not None and variance is not None else "by flag and name"
    if mean is None:
        means = [c for c in candidates if name_role(c) == "mean" and c != variance]
        mean = means[0] if len(means) == 1 else None
    if variance is None:
        variances = [c for c in candidates if name_role(c) == "variance" and c != mean]
        variance = variances[0] if len(variances) == 1 else None
    if mean is None and variance is None and len(candidates) == 2:
        return candidates[0], candidates[1], "by position (the first is the mean)"
    if (mean is None) != (variance is None):
        # One is known: the other is the one output left that is not a sample.
        rest = [c for c in candidates if c not in (mean, variance) and name_role(c) != "sample"]
        if len(rest) == 1:
            mean, variance = (rest[0], variance) if mean is None else (mean, rest[0])
            how = f"{how}, the other by elimination"
    if mean is None or variance is None:
        if len(candidates) < 2:
            raise ImportRefused(
                f"a VAE's encoder gives a mean and a variance, but only {candidates} is "
                f"[N, {latent}]: pass --kind ae if the model is an autoencoder"
            )
        raise ImportRefused(
            f"the encoder has {len(candidates)} outputs of the latent's shape [N, {latent}], "
            f"{candidates}, and their names do not say which is the mean and which the "
            "variance: pass --mean NAME and --logvar NAME (or --kind ae and --mean NAME for an "
            "autoencoder)"
        )
    if mean == variance:
        raise ImportRefused(f"--mean and --logvar both name {mean!r}: name two outputs")
    return mean, variance, how
