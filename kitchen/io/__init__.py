"""Small file utilities every package shares: atomic writes, JSONL, secrets, cache root."""
