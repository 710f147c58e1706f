"""Generation backends: vLLM for serving, transformers + peft as the exact reference."""
