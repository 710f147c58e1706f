"""The front doors: gRPC (Chat, Admin, health, reflection), both OpenAI HTTP apps, auth, and the
server that runs them on one event loop."""
