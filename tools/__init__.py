"""The music toolkit the graph calls and anyone can use alone: ABC, the corpus, retrieval,
rendering, explanation, and the few modules they share (metrics, programs, images, files).

May import `img2music.settings` and `img2music.prompt_files`, never the graph, the pipeline, the
server, evaluation or the CLI; `tests/test_architecture.py` checks each subpackage's own rule.
"""
