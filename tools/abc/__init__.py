"""ABC text: scan, parse-check, diagnostics, the directive filter, extract, repair and convert.

May import only the settings and `tools.programs` (which runs abc2midi): nothing else of ours.
"""
