"""oblivio eval."""
