"""A run's data: loading rows, streaming, inspection and the token cache."""
