"""The composing graph: describe, retrieve, compose, parse-check, evaluate and explain; its state,
the run's context, the nodes and routers, and the models they call (`models`, `profiles`,
`local_vlm`).

May import the tools and the root modules (settings, prompt files, templating, redaction),
never the pipeline, the server, evaluation or the CLI.
"""
