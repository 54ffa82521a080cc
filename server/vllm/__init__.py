"""Hosting Keye-VL-8B with vLLM: the one command that serves the model img2music calls."""
