"""oblivio detector."""
