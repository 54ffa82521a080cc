"""The one Jinja environment every template renders in: prompts (shipped, the operator's folder,
or edited per run from LangGraph Studio) and the report page.

Templates are untrusted text: anyone who can reach LangGraph's API may edit a prompt for a run.
They render in Jinja's `ImmutableSandboxedEnvironment`, which refuses attributes that lead out of
the template (`__globals__`, `__class__`, …) and changes to the values passed in, and this
environment is stricter still: no `lipsum`, multiplication and powers that would build huge
values refused, and the text a template may be and write capped. A template that breaks a rule
fails with `TemplateRefused`, one line naming the template; nothing it asked for runs.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

from jinja2 import BaseLoader, StrictUndefined, TemplateError, Undefined
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_CHARS = 50_000
MAX_RENDERED_CHARS = 500_000
MAX_EXPONENT = 64


class TemplateRefused(ValueError):
    """A template that cannot be rendered safely; the message names it, in one line."""

    def __init__(self, template: str, reason: str) -> None:
        super().__init__(f"the template {template} was refused: {' '.join(reason.split())}")
        self.template = template


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with `*` and `**` checked before they build a value."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Context, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**" and isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"a power above {MAX_EXPONENT} is not allowed")
        if operator_name == "*":
            sized, count = ((left, right) if isinstance(right, int) else (right, left))
            if isinstance(sized, str | list | tuple) and isinstance(count, int) \
                    and len(sized) * count > MAX_RENDERED_CHARS:
                raise SecurityError(f"a repetition longer than {MAX_RENDERED_CHARS:,} items "
                                    "is not allowed")
            return operator.mul(left, right)
        return super().call_binop(context, operator_name, left, right)


def sandbox(loader: BaseLoader | None = None, *, strict: bool = False,
            autoescape: bool = False, **options: Any) -> BoundedSandbox:
    """A fresh environment: `strict` makes a missing variable an error rather than a blank."""
    environment = BoundedSandbox(loader=loader, autoescape=autoescape,
                                 undefined=StrictUndefined if strict else Undefined, **options)
    environment.globals.pop("lipsum", None)
    return environment


def render(environment: BoundedSandbox, *, template: str, variables: Mapping[str, object],
           text: str | None = None, max_chars: int | None = MAX_RENDERED_CHARS) -> str:
    """Render the file `template` from the environment's loader, or `text` in its place (an
    edit, named `template` in errors), into at most `max_chars` characters (None: no limit, for
    a page that embeds its images); every failure is a `TemplateRefused`."""
    if text is not None and len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateRefused(template, f"it is {len(text):,} characters, over the "
                              f"{MAX_TEMPLATE_CHARS:,}-character limit")
    try:
        compiled = (environment.from_string(text) if text is not None
                    else environment.get_template(template))
        rendered = compiled.render(**variables)
    except (TemplateError, SecurityError, ArithmeticError, TypeError, ValueError,
            LookupError, AttributeError, RecursionError) as error:
        line = getattr(error, "lineno", None)
        where = f" (line {line})" if line else ""
        raise TemplateRefused(template, f"{error}{where}") from None
    if max_chars is not None and len(rendered) > max_chars:
        raise TemplateRefused(template, f"it wrote {len(rendered):,} characters, over the "
                              f"{max_chars:,}-character limit")
    return rendered
