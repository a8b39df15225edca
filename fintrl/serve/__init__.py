"""`fintrl serve`: the HTTP app, the service behind it, and the micro-batcher."""
