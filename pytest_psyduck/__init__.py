"""psyduck: run a pytest suite on a container farm and bring the results home."""
