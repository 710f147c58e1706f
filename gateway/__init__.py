"""oblivio gateway."""
