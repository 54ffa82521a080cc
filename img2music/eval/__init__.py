"""`img2music eval`: variants of the graph on your images, judged blind, measured, compared."""
