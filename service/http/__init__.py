"""HTTP: the endpoint table and everything derived from it (fast path, routes, OpenAPI), the
guard, the transport, the app's state, the metadata, health, docs and Open Inference Protocol
routes. `service.app` puts them together."""
