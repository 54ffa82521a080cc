"""Serving img2music: the OpenAI-compatible app (`app`: routes; `middleware`: limits, Host and
key; `protocol` and `completions`: requests and answers in OpenAI's shapes; `run_pool`: the
runs; `langgraph_runs`: the runs through a LangGraph server's runs API when the app is mounted
in one; `image_urls`; `page`), LangGraph's auth handler, and the vLLM launch (`vllm`).

May import the pipeline, the graph, the tools and the root modules, never evaluation or the CLI.
"""
