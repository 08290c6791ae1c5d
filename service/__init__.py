"""The inference service: serves exported encoders and decoders over REST (no torch at run time)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vae-serving")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"
