"""Serving img2music: the OpenAI-compatible endpoint and the model host."""
