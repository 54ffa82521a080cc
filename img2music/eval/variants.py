"""Variants of the graph to compare: built-in ablations and baselines, a config file's own, and
prompt folders (`--prompts NAME=DIR`) for prompt A/B runs."""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from img2music.graph.context import Context, as_operator, renamed_hint
from img2music.prompt_files import PromptSet, prompt_set
from img2music.settings import Settings

BUILTIN: dict[str, dict[str, Any]] = {
    "full": {"rag": True, "refine": True},
    # The same, written under the ABC grammar (masked locally, sent to every endpoint).
    "constrained": {"rag": True, "refine": True, "vlm_grammar": "on"},
    "no-rag": {"rag": False, "refine": True},
    "no-refine": {"rag": True, "refine": False},
    "no-rag-no-refine": {"rag": False, "refine": False},
    # Mozart's Touch, symbolic: the composer writes from the VLM's caption alone.
    "caption-only": {"rag": False, "refine": False, "see_image": False},
}
EVAL_SEED = 0
EVAL_DEFAULTS: dict[str, Any] = {"explain": "none", "vlm_grammar": "off"}
"""Explanations are not measured, so an evaluation does not spend time drawing them; every
variant composes as the method does, checking afterwards, unless it asks for the grammar."""
GRAPH_PROMPTS = ("system.j2", "describe.j2", "compose.j2", "repair.j2", "refine.j2",
                 "metric_feedback.j2", "metrics.toml")
# Where a run happens, not what it is: results stay comparable when the endpoint moves.
NOT_FINGERPRINTED = frozenset({"vlm_base_url"})


class VariantError(ValueError):
    """A variant that cannot be run; the message says which and why."""


@dataclass(frozen=True)
class Variant:
    """A named set of `Context` overrides."""

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def context(self, settings: Settings) -> Context:
        # A fixed seed (IMG2MUSIC_SEED, else 0), not one drawn per run: the same run of a
        # variant composes the same way again, so a rerun resumes instead of starting over.
        seed = settings.seed if settings.seed is not None else EVAL_SEED
        return Context.from_settings(settings, **{"seed": seed, **EVAL_DEFAULTS, **self.overrides})

    def prompts(self, settings: Settings) -> PromptSet:
        return prompt_set(self.context(settings).prompts_dir or None)

    def fingerprint(self, settings: Settings) -> str:
        """What the results depend on: every setting and the prompt files' content."""
        context = {k: v for k, v in self.context(settings).__dict__.items()
                   if k not in NOT_FINGERPRINTED and k != "prompts_dir"}
        payload = json.dumps({"context": context, "prompts": self.prompts(settings).hash},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def load_config(path: Path) -> dict[str, dict[str, Any]]:
    """`[variants.NAME]` tables of Context fields, optionally `base = "no-rag"`; a relative
    `prompts_dir` is read from the config file's folder."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise VariantError(f"cannot read the variants file {path}: {error}") from error
    tables = data.get("variants", {})
    if not isinstance(tables, dict) or not all(isinstance(t, dict) for t in tables.values()):
        raise VariantError(f"{path}: expected [variants.NAME] tables")
    known = {**BUILTIN}
    for name, table in tables.items():
        settings = dict(table)
        base = settings.pop("base", None)
        if base is not None and base not in known:
            raise VariantError(f"{path}: variant {name!r} has an unknown base {base!r} "
                               f"(known: {', '.join(known)})")
        if "prompts_dir" in settings:
            settings["prompts_dir"] = str(path.parent / str(settings["prompts_dir"]))
        known[name] = {**(known[base] if base else {}), **settings}
        _check_overrides(name, known[name])
    return {name: known[name] for name in tables}


def _check_overrides(name: str, overrides: Mapping[str, Any]) -> None:
    allowed = {f.name for f in fields(Context)}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise VariantError(f"variant {name!r}: unknown setting(s) "
                           f"{', '.join(map(renamed_hint, unknown))} "
                           f"(known: {', '.join(sorted(allowed))})")
    try:
        with as_operator():  # an eval config is the operator's, like the CLI
            TypeAdapter(Context).validate_python({**EVAL_DEFAULTS, **overrides})
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in error.errors())
        raise VariantError(f"variant {name!r}: {problems}") from error


def check_prompt_folder(name: str, folder: Path) -> None:
    """A prompt set must hold every template the graph renders (the judge's are never read)."""
    if not folder.is_dir():
        raise VariantError(f"prompt set {name!r}: {folder} is not a folder")
    missing = [file for file in GRAPH_PROMPTS if not (folder / file).is_file()]
    if missing:
        raise VariantError(f"prompt set {name!r}: {folder} lacks {', '.join(missing)} "
                           "(copy the shipped prompts/ folder and edit it)")


def resolve_variants(
    names: Sequence[str] | None = None,
    *,
    config: Path | None = None,
    prompts: Sequence[tuple[str, Path]] = (),
    base: Mapping[str, Any] | None = None,
) -> list[Variant]:
    """The variants to run, in order; `base` holds run settings every variant starts from (the
    command line's), which a variant's own settings override.

    Without names: every built-in and every variant of the config file (or `full` alone when
    prompt sets are given). With prompt sets, each chosen variant runs once per prompt set,
    named after the set (`NAME`, or `BASE@NAME` when several variants are chosen).
    """
    available = {**BUILTIN, **(load_config(config) if config else {})}
    chosen = list(names) if names else (["full"] if prompts else list(available))
    unknown = [name for name in chosen if name not in available]
    if unknown:
        raise VariantError(f"unknown variant(s) {', '.join(unknown)} "
                           f"(known: {', '.join(available)})")
    if not prompts:
        variants = [Variant(name, {**(base or {}), **available[name]})
                    for name in dict.fromkeys(chosen)]
    else:
        variants = []
        for set_name, folder in prompts:
            check_prompt_folder(set_name, folder)
            for each in dict.fromkeys(chosen):
                name = set_name if len(chosen) == 1 else f"{each}@{set_name}"
                variants.append(Variant(name, {**(base or {}), **available[each],
                                               "prompts_dir": str(folder.resolve())}))
    repeated = sorted({v.name for v in variants if [w.name for w in variants].count(v.name) > 1})
    if repeated:
        raise VariantError(f"variant names must differ: {', '.join(repeated)}")
    return variants


def parse_prompt_option(value: str) -> tuple[str, Path]:
    """`NAME=DIR` from the command line."""
    name, sep, folder = value.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise VariantError(f"--prompts {value!r} is not NAME=DIR")
    return name.strip(), Path(folder.strip()).expanduser()
