"""ABC text: scan, parse-check, diagnostics, the directive filter, extract, repair and convert.

Needs nothing else of ours but the settings and `tools.programs` (which runs abc2midi).
"""
