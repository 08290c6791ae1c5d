"""The Open Inference Protocol over gRPC: oip.proto and its generated modules, the codec,
the servicer, the per-call rules, the server."""
