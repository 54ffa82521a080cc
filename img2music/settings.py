"""The one home of img2music's settings: typed, described, read from `IMG2MUSIC_*` and `.env`."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from platformdirs import user_data_path
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SOUNDFONT_CANDIDATES = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
    Path("/usr/share/soundfonts/default.sf2"),
    Path("/usr/share/soundfonts/FluidR3_GM.sf2"),
)


class Settings(BaseSettings):
    """Defaults run on a new machine; every field can be set as `IMG2MUSIC_<NAME>`."""

    model_config = SettingsConfigDict(
        env_prefix="IMG2MUSIC_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    data_dir: Path = Field(
        default_factory=lambda: user_data_path("img2music"),
        description="Where indexes, runs and caches live; outside the source tree.",
    )
    abc_backend: Literal["auto", "abc2midi", "music21"] = Field(
        default="auto",
        description="ABC parser for parse-check and ABC to MIDI: abc2midi when installed (auto), "
        "or music21.",
    )
    max_abc_bytes: int = Field(
        default=262_144, gt=0, description="Largest ABC text accepted; longer input is refused."
    )
    max_notes: int = Field(
        default=8_000, gt=0, description="Most notes a tune may have before parse-check refuses it."
    )
    max_bars: int = Field(
        default=1_500, gt=0, description="Most bars a tune may have before parse-check refuses it."
    )
    max_midi_bytes: int = Field(
        default=8_388_608, gt=0, description="Largest MIDI file accepted for MIDI to ABC."
    )
    midi_to_abc_bars: int = Field(
        default=24, gt=0, description="Bars kept per voice when a MIDI file is converted to ABC."
    )
    program_timeout_s: float = Field(
        default=30.0, gt=0, description="Seconds an external program may run."
    )
    max_output_bytes: int = Field(
        default=268_435_456,
        gt=0,
        description="Largest file an external program may write (WAV files are the big ones).",
    )
    soundfont: Path | None = Field(
        default=None,
        description="General MIDI SoundFont for audio; found among Debian's SoundFonts when unset.",
    )
    sample_rate: int = Field(default=44_100, gt=0, description="Audio sample rate in Hz.")
    prompts_dir: Path | None = Field(
        default=None,
        description="A prompt folder that replaces the shipped one, for prompt iteration.",
    )
    log_level: str = Field(default="WARNING", description="Logging level for library messages.")

    def find_soundfont(self) -> Path | None:
        """The configured SoundFont, or the first General MIDI one from Debian's packages."""
        if self.soundfont is not None:
            return self.soundfont if self.soundfont.is_file() else None
        return next((path for path in SOUNDFONT_CANDIDATES if path.is_file()), None)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process; tests clear the cache after changing the environment."""
    return Settings()
