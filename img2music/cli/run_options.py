"""The run-setting flags of a command, one per run option (`graph.options`), made from the
declaration of `Context` rather than written out again: a field added to `Context` becomes a
flag (`--name-with-dashes`, `--name/--no-name` for a switch) with its bounds and help at once.

Typer builds a command's options from its function's signature, so `with_run_options` gives the
command a signature with one keyword parameter per option, and hands the command the values
that were given, checked against the declaration, as one `run_options` dictionary.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Annotated, Any

import typer

from img2music.graph.context import Context
from img2music.graph.options import OptionRefused, RunOption, checked_options, run_options

SHORT_FLAGS = {"rag_k": "-k"}
"""Short aliases, for the options typed most."""
PANEL = "Run settings"


def with_run_options(command: Callable[..., None], *,
                     context: type[Context] = Context) -> Callable[..., None]:
    """`command`, which takes `run_options: dict[str, Any]`, as a Typer command with a flag per
    run option of `context`; only the options given are in the dictionary (the rest keep their
    settings)."""
    signature = inspect.signature(command, eval_str=True)
    own = [parameter for parameter in signature.parameters.values()
           if parameter.name != "run_options"]
    options = run_options(context)
    clashes = {option.name for option in options} & {parameter.name for parameter in own}
    assert not clashes, f"{command.__name__} has its own {clashes}: run options may not"
    flags = [inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                               annotation=_annotation(option, context)) for option in options]

    @functools.wraps(command)
    def run(**values: Any) -> None:
        given = {option.name: values.pop(option.name) for option in options}
        try:
            checked = checked_options(given, context)
        except OptionRefused as error:
            flag = next(option.flag for option in options if option.name == error.where)
            raise typer.BadParameter(str(error).partition(": ")[2],
                                     param_hint=f"'{flag}'") from None
        command(**values, run_options=checked)

    parameters = [*own, *flags]
    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    return run


def _annotation(option: RunOption, context: type[Context]) -> Any:
    """The option's parameter type for Typer: its value or None (not given), and its flag."""
    names = [option.flag, *([SHORT_FLAGS[option.name]] if option.name in SHORT_FLAGS else [])]
    help_text = " ".join((option.info.description or "").split()) + _default_text(option,
                                                                                    context)
    if option.type is bool:
        dashed = option.flag.removeprefix("--")
        flag = typer.Option(f"--{dashed}/--no-{dashed}", help=help_text, show_default=False,
                            rich_help_panel=PANEL)
        return Annotated[bool | None, flag]
    limits: dict[str, Any] = {}
    whole = option.type is int or option.type == int | None
    for item in option.info.metadata:
        for kind, key, step in (("ge", "min", 0), ("le", "max", 0), ("gt", "min", 1),
                                ("lt", "max", -1)):
            if hasattr(item, kind) and (whole or not step):
                limits[key] = getattr(item, kind) + step
    value_type = option.type if option.type == int | None else option.type | None
    return Annotated[value_type, typer.Option(*names, help=help_text, show_default=False,
                                              rich_help_panel=PANEL, **limits)]


def _default_text(option: RunOption, context: type[Context]) -> str:
    """Where the option's value comes from when the flag is not given."""
    if option.has_setting:
        return f" Default: IMG2MUSIC_{option.name.upper()}."
    default = next(item.default for item in fields(context) if item.name == option.name)
    if default is MISSING or default is None:
        return ""
    shown = ("on" if default else "off") if isinstance(default, bool) else default
    return f" Default: {shown}."
