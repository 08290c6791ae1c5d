"""An MLServer custom runtime over the service's bundled `mnist-vae` encoder: the peer that
benchmarks/oip_bench.py --mlserver drives with the same Open Inference Protocol request as the
service's own /v2 path.

It is written as MLServer's custom-runtime guide shows one (an `mlserver.MLModel` subclass whose
`load` opens the model and whose `predict` decodes with MLServer's codecs), and runs in MLServer's
own virtual environment (benchmarks/mlserver/requirements.txt), never in the project's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, NumpyRequestCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class VaeEncoderRuntime(MLModel):
    """images (N, 28, 28, 1) FP32 in [0, 1] -> mu and logvar (N, latent) FP32."""

    async def load(self) -> bool:
        path = await get_model_uri(self.settings)
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        options = ort.SessionOptions()
        # The same thread settings as the service (VAE_INTRA_OP_THREADS=1,
        # VAE_INTER_OP_THREADS=1, no spinning): one core per call for a model this small, and
        # no idle thread spinning against the HTTP process on a 2-core machine.
        options.intra_op_num_threads = int(extra.get("intra_op_threads", 1))
        options.inter_op_num_threads = int(extra.get("inter_op_threads", 1))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [output.name for output in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyRequestCodec.decode_request(payload)
        # The protocol's (N, 28, 28, 1) is the graph's (N, 1, 28, 28): one channel, same order.
        x = np.ascontiguousarray(images, dtype=np.float32).reshape(len(images), 1, 28, 28)
        results = self._session.run(self._outputs, {self._input: x})
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output(name, result)
                for name, result in zip(self._outputs, results, strict=True)
            ],
        )
