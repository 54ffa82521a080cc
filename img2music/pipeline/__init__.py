"""Composing one image end to end and writing the run's files: what the CLI, the server and
evaluation all call (`runs.compose`), the report, retention of run folders, and readiness.

May import the graph, the tools and the root modules, never the server, evaluation or the CLI.
"""
