"""Where in the image a tune came from: the VLM's attention, or CLIP patch relevance.

May import `tools.retrieval` (the embedder), `tools.images` and `tools.devices`.
"""
