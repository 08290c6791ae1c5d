"""What the service tells about itself: metrics, the access log, logging, the request context."""
