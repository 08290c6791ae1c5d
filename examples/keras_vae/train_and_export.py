"""Train the keras.io "Variational AutoEncoder" briefly and export its encoder and decoder to ONNX
with Keras's own exporter: the kind of model people bring to the service from Keras.

Keras 3 on the torch backend (Keras's ONNX export then goes through torch.onnx; no tensorflow or
tf2onnx needed). In a venv of its own:

    python3 -m venv keras-venv
    keras-venv/bin/pip install keras torch==2.13.0 onnx onnxscript onnxruntime numpy
    KERAS_BACKEND=torch keras-venv/bin/python examples/keras_vae/train_and_export.py \
        --data ../shared/data --out keras-vae-onnx

On the TensorFlow backend (`pip install keras tensorflow-cpu tf2onnx onnxruntime`,
KERAS_BACKEND=tensorflow) the same script exports through tf2onnx instead.

`--data` is a folder holding mnist/train-images-idx3-ubyte.gz; without it the model trains on a
few synthetic images (enough to export a working pair). `--flat` builds the MLP variant of the
classic Keras VAE: flat 784-value rows in and out instead of 28 x 28 x 1 images.
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")  # chosen before keras is imported

import keras
import numpy as np
from keras import layers, ops


class Sampling(layers.Layer):
    """z = z_mean + exp(z_log_var / 2) * epsilon: the reparameterisation trick."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        epsilon = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon


def conv_vae(latent_dim: int) -> tuple[keras.Model, keras.Model]:
    """The keras.io example: channels-last 28 x 28 x 1 images in and out."""
    images = keras.Input(shape=(28, 28, 1))
    x = layers.Conv2D(32, 3, activation="relu", strides=2, padding="same")(images)
    x = layers.Conv2D(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(16, activation="relu")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    z = Sampling(name="z")([z_mean, z_log_var])
    encoder = keras.Model(images, [z_mean, z_log_var, z], name="encoder")

    latent = keras.Input(shape=(latent_dim,))
    x = layers.Dense(7 * 7 * 64, activation="relu")(latent)
    x = layers.Reshape((7, 7, 64))(x)
    x = layers.Conv2DTranspose(64, 3, activation="relu", strides=2, padding="same")(x)
    x = layers.Conv2DTranspose(32, 3, activation="relu", strides=2, padding="same")(x)
    decoded = layers.Conv2DTranspose(1, 3, activation="sigmoid", padding="same")(x)
    return encoder, keras.Model(latent, decoded, name="decoder")


def flat_vae(latent_dim: int, hidden: int = 64) -> tuple[keras.Model, keras.Model]:
    """The MLP variant: each image a flat row of 784 values, row by row (the classic has 512
    hidden units; 64 keep the files small)."""
    rows = keras.Input(shape=(784,))
    x = layers.Dense(hidden, activation="relu")(rows)
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    z = Sampling(name="z")([z_mean, z_log_var])
    encoder = keras.Model(rows, [z_mean, z_log_var, z], name="encoder")

    latent = keras.Input(shape=(latent_dim,))
    x = layers.Dense(hidden, activation="relu")(latent)
    decoded = layers.Dense(784, activation="sigmoid")(x)
    return encoder, keras.Model(latent, decoded, name="decoder")


class VAE(keras.Model):
    """Encoder + decoder trained on reconstruction (binary cross-entropy) + KL divergence."""

    def __init__(self, encoder: keras.Model, decoder: keras.Model) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def call(self, x):
        z_mean, z_log_var, z = self.encoder(x)
        return self.decoder(z), z_mean, z_log_var

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        reconstruction, z_mean, z_log_var = y_pred
        flat = (ops.shape(x)[0], -1)
        bce = keras.losses.binary_crossentropy(
            ops.reshape(x, flat), ops.reshape(reconstruction, flat)
        )  # the mean over the 784 pixels: times 784 is their sum
        kl = -0.5 * ops.sum(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1)
        return ops.mean(784.0 * bce + kl)


def training_images(data: Path | None, count: int) -> np.ndarray:
    """(count, 28, 28, 1) float32 in [0, 1]: MNIST's first training images, or synthetic ones
    (a bright bar on a dark background, at random places)."""
    if data is not None:
        with gzip.open(data / "mnist" / "train-images-idx3-ubyte.gz") as f:
            pixels = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        return (pixels[:count, :, :, None] / 255.0).astype(np.float32)
    rng = np.random.default_rng(0)
    images = np.zeros((count, 28, 28, 1), np.float32)
    for image, (row, col) in zip(images, rng.integers(4, 20, (count, 2)), strict=True):
        image[row : row + 6, col : col + 3] = 1.0
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="folder holding mnist/ (IDX files)")
    parser.add_argument("--out", type=Path, default=Path("keras-vae-onnx"))
    parser.add_argument("--flat", action="store_true", help="the MLP variant (784 in and out)")
    parser.add_argument("--latent-dim", type=int, default=2)
    parser.add_argument("--images", type=int, default=10000, help="training images")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    encoder, decoder = flat_vae(args.latent_dim) if args.flat else conv_vae(args.latent_dim)
    images = training_images(args.data, args.images if args.data else 256)
    if args.flat:
        images = images.reshape(len(images), 784)

    vae = VAE(encoder, decoder)
    vae.compile(optimizer=keras.optimizers.Adam())
    vae.fit(images, epochs=args.epochs, batch_size=128, verbose=2)

    # Keras's own exporter, as a Keras user calls it; the batch axis stays dynamic. The sampled
    # z cannot go with the encoder: on the torch backend keras.random holds a torch.Generator
    # torch.onnx cannot trace ("Unsupported prim::Constant kind: 'ival'"), and on TensorFlow
    # tf2onnx writes a StatelessRandomNormalV2 node onnxruntime refuses. The service samples
    # from z_mean and z_log_var itself, so export those two.
    encoder = keras.Model(encoder.input, encoder.outputs[:2], name="encoder")
    encoder(images[:1])  # the exporter takes its shapes from a model that has been called
    args.out.mkdir(parents=True, exist_ok=True)
    encoder.export(str(args.out / "encoder.onnx"), format="onnx")
    decoder.export(str(args.out / "decoder.onnx"), format="onnx")


if __name__ == "__main__":
    main()
