"""img2music: turn an image into music that a person can read, hear and understand."""

__version__ = "0.1.0"
