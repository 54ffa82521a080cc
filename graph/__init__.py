"""The composing graph: describe, retrieve, compose, parse-check, evaluate and explain."""
