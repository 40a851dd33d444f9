"""Remote components (SPEC §5): a worker, its registry, signed messages and shared storage."""
