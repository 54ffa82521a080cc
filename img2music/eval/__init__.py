"""`img2music eval`: variants of the graph on your images, judged blind, measured, compared.

May import the pipeline, the graph, the tools and the root modules, never the server or the CLI.
"""
