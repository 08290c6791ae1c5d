"""The inference service: serves exported encoders and decoders over REST (no torch at run time)."""
