"""Requests in (JSON, .npy, multipart uploads, image files), results out (JSON, .npy/.npz, PNG)."""
