"""The music memory: the CLIP embedder, the Chroma index of records, and the retriever.

May import `tools.corpus`, `tools.abc`, the shared tools modules and the settings.
"""
