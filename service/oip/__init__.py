"""The Open Inference Protocol (KServe v2), whatever the transport: its objects (`schemas`) and
its operations (`dataplane`). REST (`service.http.oip`) and gRPC read their bodies into the
protocol's request and write its results back in their own encodings."""
