"""Real tunes for the index: records, one module per source, and the captions written for them.

May import `tools.abc`, `tools.programs` and the settings.
"""
