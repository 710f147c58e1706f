"""oblivio proto/oblivio/v1."""
