"""The models: onnxruntime sessions (runtime), the set being served (registry), batching."""
