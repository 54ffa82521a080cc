"""The `img2music` command line: one module per command group (`toolkit`, `index`, `compose`,
`serving`, `evaluation`), assembled in `main`; `output` is what they share.

The top of the stack: may import anything of ours, and nothing imports it.
"""
