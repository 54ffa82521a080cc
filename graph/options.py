"""The run options: the fields of `Context` a user may set per run, read off its declaration.

`Context` is the one declaration of a run's settings (name, type, bounds, description, title).
Everything that offers them is derived from it here, so a field added to `Context` is offered at
once everywhere: `compose`'s flags (`img2music.cli.run_options`), the HTTP `img2music` object
(`options_model`, whose JSON schema `GET /v1/options` serves and the web page builds its
Advanced panel from), and the rows of docs/settings.md. The operator's fields (where the model
lives, which files are read) and the prompt templates (Studio edits them) are not offered.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model
from pydantic.fields import FieldInfo

from img2music.graph.context import (
    FORMER_NAMES,
    OPERATOR_FIELDS,
    PROMPT_FIELDS,
    Context,
    setting_value,
)
from img2music.settings import Settings

NOT_OFFERED = frozenset({*OPERATOR_FIELDS, *PROMPT_FIELDS.values()})
"""Context fields no request, flag or control sets: the operator's, and the prompts."""


@dataclass(frozen=True)
class RunOption:
    """One run setting as the doors offer it: its name, its value's type (without the pydantic
    metadata), and its declaration (description, title, bounds)."""

    name: str
    type: Any
    info: FieldInfo

    @property
    def flag(self) -> str:
        """Its command-line flag: the name with dashes."""
        return "--" + self.name.replace("_", "-")

    @property
    def title(self) -> str:
        return self.info.title or self.name.replace("_", " ").capitalize()

    @property
    def has_setting(self) -> bool:
        """Whether IMG2MUSIC_<NAME> sets its default."""
        return self.name in Settings.model_fields


def run_options(context: type[Context] = Context) -> list[RunOption]:
    """The options of `context`'s fields, in their declared order."""
    hints = get_type_hints(context, include_extras=True)
    options = []
    for item in fields(context):
        if item.name in NOT_OFFERED:
            continue
        hint = hints[item.name]
        infos = [part for part in get_args(hint)[1:] if isinstance(part, FieldInfo)]
        value_type = get_args(hint)[0] if get_origin(hint) is Annotated else hint
        options.append(RunOption(item.name, value_type, FieldInfo.merge_field_infos(*infos)
                                 if infos else FieldInfo()))
    return options


def option_defaults(settings: Settings, context: type[Context] = Context) -> dict[str, Any]:
    """What each option is when a run leaves it out: its setting, or the field's default (a
    seed left unset is None: each run chooses its own)."""
    defaults = {item.name: item.default for item in fields(context)
                if item.default is not MISSING}
    return {option.name: setting_value(settings, option.name) if option.has_setting
            else defaults.get(option.name) for option in run_options(context)}


def options_model(context: type[Context] = Context) -> type[BaseModel]:
    """The `img2music` object of a request: every option optional (unset keeps the server's
    setting), with the field's bounds and description; any other key is refused."""
    if context not in _MODELS:
        _MODELS[context] = _made_model(context)
    return _MODELS[context]


_MODELS: dict[type[Context], type[BaseModel]] = {}


def _made_model(context: type[Context]) -> type[BaseModel]:
    definitions: dict[str, Any] = {
        option.name: (option.type | None, FieldInfo.merge_field_infos(option.info, default=None))
        for option in run_options(context)}
    return create_model("RunOptions", __config__=ConfigDict(extra="forbid"),
                        __doc__="This run's settings; one left out keeps the server's.",
                        **definitions)


class OptionRefused(ValueError):
    """A run option that is unknown or out of its bounds; `where` names it."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where


def checked_options(values: dict[str, Any], context: type[Context] = Context) -> dict[str, Any]:
    """The options given (None left out), each checked against its declaration; an unknown
    name (a former one with its new name) or a bad value raises `OptionRefused`."""
    model = options_model(context)
    for name in values:
        if name not in model.model_fields:
            if name in OPERATOR_FIELDS:
                raise OptionRefused(name, "not a run option: the operator's setting "
                                    f"IMG2MUSIC_{name.upper()} decides it")
            now = f"; it is now {FORMER_NAMES[name]}" if name in FORMER_NAMES else ""
            raise OptionRefused(name, f"unknown option{now}")
    try:
        checked = model.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        raise OptionRefused(".".join(map(str, first["loc"])), first["msg"]) from None
    return {name: value for name, value in checked.model_dump().items() if value is not None}
