"""`GRPCInferenceService`: each call of the protocol's gRPC API answered by the dataplane
(`service.oip.dataplane`, `service.oip.repository`), through `service.grpc.calls` (keys,
capacity, timeouts, errors, metrics, the access log) and the codec (`service.grpc.codec`)."""

from __future__ import annotations

import functools
from typing import Any, TypeAlias

import grpc
import numpy as np

from service.errors import BadRequest
from service.grpc import codec
from service.grpc import oip_pb2 as pb
from service.grpc.calls import Calls
from service.grpc.oip_pb2_grpc import GRPCInferenceServiceServicer
from service.http.endpoints import OFF_LOOP_BODY_BYTES, parse_off_loop
from service.http.state import AppState
from service.models.registry import ModelRegistry
from service.oip import dataplane, repository
from service.oip.dataplane import ProtocolModel
from service.oip.schemas import InferenceRequest
from service.settings import Settings

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
# More tensors than any model here takes: refused before each becomes a Python object.
MAX_TENSORS = 16


class Servicer(GRPCInferenceServiceServicer):
    def __init__(self, state: AppState, calls: Calls) -> None:
        self.state = state
        self.calls = calls

    def _registry(self) -> ModelRegistry:
        return self.state.ready_registry()

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        async def answer() -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self.calls.run("ServerLive", context, answer)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        async def answer() -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self.state.ready)

        return await self.calls.run("ServerReady", context, answer)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        async def answer() -> pb.ModelReadyResponse:
            model = dataplane.find_model(self._registry(), request.name, request.version or None)
            return pb.ModelReadyResponse(ready=model.runtime.ready)

        return await self.calls.run("ModelReady", context, answer)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        async def answer() -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(**dataplane.server_metadata().model_dump())

        return await self.calls.run("ServerMetadata", context, answer)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        async def answer() -> pb.ModelMetadataResponse:
            model = dataplane.find_model(self._registry(), request.name, request.version or None)
            return pb.ModelMetadataResponse(**dataplane.model_metadata(model).model_dump())

        return await self.calls.run("ModelMetadata", context, answer)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> Any:
        return await self.calls.run("ModelInfer", context, lambda: self._infer(request))

    async def _infer(self, message: pb.ModelInferRequest) -> pb.ModelInferResponse:
        registry = self._registry()
        model = dataplane.find_model(registry, message.model_name, message.model_version or None)
        for what, count in (("inputs", len(message.inputs)), ("outputs", len(message.outputs))):
            if count > MAX_TENSORS:
                raise BadRequest("", f"{what}: {count} tensors; at most {MAX_TENSORS}")
        settings = registry.settings
        parse = functools.partial(_parse, message, model, settings)
        raw = bool(message.raw_input_contents)
        # Off the event loop when large, as REST: typed contents become arrays value by value;
        # raw bytes are read in place (an eighth of the cost).
        size = message.ByteSize()
        if (size // 8 if raw else size) <= OFF_LOOP_BODY_BYTES:
            request, x = parse()
        else:
            request, x = await parse_off_loop(registry.executor, parse)
        result = await dataplane.infer(model, request, x, registry, settings, "npy")
        return codec.write_response(model.name, model.version, request, result, raw)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        async def answer() -> pb.RepositoryIndexResponse:
            _one_repository(request.repository_name)
            entries = repository.index(self._registry(), request.ready)
            models = [
                pb.RepositoryIndexResponse.ModelIndex(
                    name=e.name, version=e.version, state=e.state, reason=e.reason
                )
                for e in entries
            ]
            return pb.RepositoryIndexResponse(models=models)

        return await self.calls.run("RepositoryIndex", context, answer)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Any:
        async def answer() -> pb.RepositoryModelLoadResponse:
            _one_repository(request.repository_name)
            repository.check_parameters(dict(request.parameters))
            await repository.load(self._registry(), self.state.reload_gate, request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await self.calls.run("RepositoryModelLoad", context, answer)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        async def answer() -> pb.RepositoryModelUnloadResponse:
            _one_repository(request.repository_name)
            repository.check_parameters(dict(request.parameters))
            await repository.unload(self._registry(), self.state.reload_gate, request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self.calls.run("RepositoryModelUnload", context, answer)


def _one_repository(name: str) -> None:
    if name:
        raise BadRequest(
            "", f"repository_name: {name[:40]!r}; this service has one repository, send none"
        )


def _parse(
    message: pb.ModelInferRequest, model: ProtocolModel, settings: Settings
) -> tuple[InferenceRequest, np.ndarray]:
    limits = dataplane.limits(model, settings)
    check = functools.partial(dataplane.check_inputs, model=model, limits=limits)
    request, values = codec.read_request(message, check)
    return request, dataplane.prepare(request, values, model, settings)
