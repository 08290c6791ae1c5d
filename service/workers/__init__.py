"""Worker processes (VAE_WORKERS): a supervisor that checks the models, owns the port and hands
each connection to a worker; the workers, each a whole service on its own event loop; what they
say to each other (reloads in step, readiness); and the thread budget per process."""
