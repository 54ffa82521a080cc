"""ABC text: scan, parse-check, diagnostics, the directive filter, extract, repair, convert, and
its voices one by one.

May import only the settings and `tools.programs` (which runs abc2midi): nothing else of ours.
"""
