"""oblivio adapters."""
