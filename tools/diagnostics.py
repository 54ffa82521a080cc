"""One diagnostic type for every checker, shaped so that a model can act on it.

Every diagnostic is in one of two tiers (`severity`):

- **error**: the tune cannot be read as its writer meant it, so it is not played, measured or
  delivered. `img2music.tools.abc_scan` lists exactly which conditions these are.
- **fault**: what a musician would correct but a player can still play (a bar that does not
  fill the meter, voices of unequal length, an unbalanced slur, a field no player knows). A tune
  with faults is delivered, with its faults reported.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Severity = Literal["error", "fault"]


class Diagnostic(BaseModel):
    """A problem at a place in the ABC text; `line` and `col` are 1-based, 0 when unknown."""

    severity: Severity = Field(description="The tier: error (not playable as meant) or fault.")
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
