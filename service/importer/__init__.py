"""The importer: an encoder and a decoder ONNX file from any framework -> a model folder the
service serves. `python -m service.importer --help`; `docs/serving-your-model.md` has examples.

graphs.py reads the graphs' tensors (layouts, latent, which output is which), probe.py runs them,
cli.py asks, writes and loads the folder as the service will.
"""

from service.importer.cli import ImportOptions, import_model, main

__all__ = ["ImportOptions", "import_model", "main"]
