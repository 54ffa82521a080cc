"""Prompt files, shipped as package data; the templates themselves are data, not code
(`img2music.prompt_files` loads and renders them). Imports nothing.
"""
