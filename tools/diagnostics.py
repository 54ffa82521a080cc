"""One diagnostic type for every checker, shaped so that a model can act on it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Diagnostic(BaseModel):
    """A problem at a place in the ABC text; `line` and `col` are 1-based, 0 when unknown."""

    severity: Literal["error", "warning"]
    line: int = Field(ge=0)
    col: int = Field(ge=0)
    message: str
    source: str = Field(default="", description="The offending source line, as written.")
    checker: str = Field(default="img2music", description="Which checker found it.")

    def one_line(self) -> str:
        """The form fed back to a model and printed by the CLI: what is wrong and where."""
        where = f"line {self.line}" + (f", col {self.col}" if self.col else "") if self.line else ""
        text = f"{where}: {self.message}" if where else self.message
        if self.source:
            text += f"  ⟶  {self.source.strip()[:120]}"
        return text
