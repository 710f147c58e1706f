"""Serving a chat request: the chat core (validate, render, detect, gate, generate), the runtime
that wires it, the backends (vLLM, reference), enforcement state, metrics, the default model."""
