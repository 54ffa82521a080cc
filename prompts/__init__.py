"""Prompt files, shipped as package data; the templates themselves are data, not code."""
