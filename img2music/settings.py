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
    max_image_pixels: int = Field(
        default=40_000_000, gt=0,
        description="Largest image accepted, in pixels; larger ones are refused as possible "
        "decompression bombs.",
    )
    max_image_bytes: int = Field(
        default=25_000_000, gt=0, description="Largest image file accepted, in bytes."
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
    clip_model: str = Field(
        default="ViT-B-32",
        description="open_clip model that embeds images, descriptions and captions into one "
        "space; `img2music-tiny` is a small config for offline runs and tests.",
    )
    clip_pretrained: str = Field(
        default="laion2b_s34b_b79k",
        description="open_clip pretrained tag or checkpoint path; `none` builds the model with "
        "seeded random weights (no download, no meaning: for offline runs and tests).",
    )
    clip_context_length: int | None = Field(
        default=None,
        ge=8,
        description="Text positions; above the model's own (77), positions are stretched the "
        "LongCLIP way (first 20 kept, the rest interpolated) so long captions are not cut.",
    )
    clip_device: str = Field(default="auto", description="`auto`, `cpu` or `cuda[:N]`.")
    clip_batch_size: int = Field(default=64, gt=0, description="Texts or images embedded at once.")
    rag_k: int = Field(default=4, ge=0, le=20, description="Examples retrieved for each tune.")
    rag_sources: str = Field(
        default="music21",
        description="Comma-separated sources whose indexes retrieval searches: music21, "
        "midicaps, abc-dir.",
    )
    rag_fusion: Literal["rrf", "weighted"] = Field(
        default="rrf",
        description="How image and description similarities combine: reciprocal-rank fusion "
        "(scale-free) or a weighted sum of cosine similarities.",
    )
    rag_image_weight: float = Field(
        default=0.5, ge=0, le=1, description="Share of the image similarity in the fused score."
    )
    rag_candidates: int = Field(
        default=64, gt=0, description="Records fetched per query before fusing and filtering."
    )
    rag_example_tokens: int = Field(
        default=600, gt=0, description="Token budget for each example's ABC in the prompt."
    )
    log_level: str = Field(default="WARNING", description="Logging level for library messages.")

    @property
    def rag_source_list(self) -> list[str]:
        return [name.strip() for name in self.rag_sources.split(",") if name.strip()]

    @property
    def index_dir(self) -> Path:
        """Where the Chroma index lives."""
        return self.data_dir / "index"

    def find_soundfont(self) -> Path | None:
        """The configured SoundFont, or the first General MIDI one from Debian's packages."""
        if self.soundfont is not None:
            return self.soundfont if self.soundfont.is_file() else None
        return next((path for path in SOUNDFONT_CANDIDATES if path.is_file()), None)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process; tests clear the cache after changing the environment."""
    return Settings()
