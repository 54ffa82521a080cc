"""The one home of img2music's settings: typed, described, read from `IMG2MUSIC_*` and `.env`."""

from __future__ import annotations

from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal

from platformdirs import user_data_path
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ProfileSetting = Literal["auto", "vllm", "openai", "ollama", "generic"]
Fusion = Literal["rrf", "weighted"]
ExplainMode = Literal["attention", "clip", "none"]
GrammarMode = Literal["auto", "on", "off"]
VLMBackend = Literal["openai", "local"]
MAX_SEED = 2**31 - 1
"""Largest seed: one every backend takes (llama.cpp's seeds are 32-bit, JSON clients' ints
are safe far beyond it)."""
MAX_TAKES = 8
"""Most candidates one run composes at once (`--takes`, OpenAI's `n`)."""
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
        json_schema_extra={"shown_default": "the user's data folder "
                                            "(`~/.local/share/img2music` on Linux)"},
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
    max_tune_seconds: float = Field(
        default=300, gt=0,
        description="Longest a tune may last when played (repeats and tempo included); a longer "
        "one is a parse-check error, so no render runs for minutes.",
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
    keep_wav: bool = Field(
        default=False,
        description="Keep tune.wav beside tune.ogg in a run's folder; off, the WAV (about 10 MB "
        "a minute) is only an intermediate, kept only when there is no sox to make the Ogg.",
    )
    runs_max_age_days: float = Field(
        default=30, gt=0,
        description="Run folders older than this are deleted from IMG2MUSIC_DATA_DIR/runs by "
        "`serve` and by `compose` without --out.",
    )
    runs_max_bytes: int = Field(
        default=5_000_000_000, gt=0,
        description="Most bytes all run folders in IMG2MUSIC_DATA_DIR/runs may take; the oldest "
        "go first when they take more.",
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
    allow_run_overrides: bool = Field(
        default=False,
        description="Let a run's context from LangGraph's API (Studio) set vlm_base_url, "
        "vlm_model and prompts_dir; off, those come from these settings only, so a run cannot "
        "send the VLM key elsewhere or make the server read other files.",
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
    rag_fusion: Fusion = Field(
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
    vlm_backend: VLMBackend = Field(
        default="openai",
        description="`openai`: any OpenAI-compatible endpoint (vLLM serving Keye-VL-8B, a "
        "hosted vision API, Ollama); `local`: an in-process transformers model.",
    )
    vlm_profile: ProfileSetting = Field(
        default="auto",
        description="What the endpoint understands beyond OpenAI's standard fields: `vllm` "
        "(top_k; structured outputs), `openai` (standard fields, max_completion_tokens), "
        "`ollama` (standard fields, max_tokens), `generic` (standard fields, max_tokens); "
        "`auto` asks the endpoint once per process.",
    )
    vlm_base_url: str = Field(
        default="http://127.0.0.1:8001/v1", description="OpenAI-compatible endpoint of the VLM."
    )
    vlm_model: str = Field(
        default="Kwai-Keye/Keye-VL-8B-Preview",
        description="Model the endpoint serves, or the local model's path or id.",
    )
    vlm_api_key: SecretStr = Field(
        default=SecretStr("EMPTY"),
        description="API key for the endpoint, if any; never shown, logged or written "
        "(`img2music vlm serve` gives it to vLLM as VLLM_API_KEY, in its environment).",
    )
    vlm_temperature: float = Field(
        default=0.6, ge=0, le=2,
        description="Sampling temperature (with top_p and top_k, Keye's recommended sampling).",
    )
    vlm_top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling.")
    vlm_top_k: int = Field(
        default=20, ge=-1, description="Top-k sampling, sent to vLLM endpoints only."
    )
    vlm_max_tokens: int = Field(default=8192, gt=0, description="Most tokens per model call.")
    vlm_thinking: bool = Field(
        default=False,
        description="Keye's think mode when composing; models without the /think switch "
        "get no switch at all.",
    )
    vlm_grammar: GrammarMode = Field(
        default="auto",
        description="Constrain the composer's answers with the ABC grammar (prompts/abc.ebnf), so "
        "broken ABC cannot be written: `auto` where the backend applies it (the local backend, "
        "a vLLM endpoint), `on` always, `off` never. Reasoning in think mode stays free.",
    )
    seed: int | None = Field(
        default=None, ge=0, le=MAX_SEED,
        description="Seed of a run's sampling, so the same seed and settings give the same tune "
        "with a deterministic model; unset, each run chooses one, and its report records it.",
        json_schema_extra={"shown_default": "a new one per run"},
    )
    vlm_timeout_s: float = Field(default=300, gt=0, description="Seconds one model call may take.")
    vlm_retries: int = Field(
        default=2, ge=0,
        description="Retries, with backoff, on connection errors, timeouts, 408, 409, 429 and "
        "5xx: a call takes at most about (retries + 1) × vlm_timeout_s, plus the backoff.",
    )
    vlm_image_pixels: int = Field(
        default=448 * 448, gt=0, description="Pixel budget of the image sent to the model."
    )
    max_repairs: int = Field(
        default=3, ge=0, le=10, description="Grammar-repair attempts per tune."
    )
    refine_rounds: int = Field(
        default=1, ge=0, le=10, description="Metric-feedback refinement rounds."
    )
    explain: ExplainMode = Field(
        default="clip",
        description="Image explanation: attention (needs IMG2MUSIC_ATTENTION_MODEL or the local "
        "backend), clip (CLIP patch relevance) or none.",
    )
    attention_model: str | None = Field(
        default=None,
        description="Local path or id of a transformers copy of the VLM, for attention maps "
        "when the VLM is served remotely.",
    )
    chroma_url: str | None = Field(
        default=None,
        description="A Chroma server (`http://host:8000`) to use instead of the embedded index "
        "in data_dir, so several img2music servers share one index.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="Bearer token that `img2music serve` (and `langgraph dev`, on LangGraph's "
        "routes) requires on every route but /health and the page's own files; unset means no "
        "authentication (fine on loopback only).",
    )
    server_max_body_bytes: int = Field(
        default=20_000_000, gt=0, description="Largest request body the server reads."
    )
    server_max_concurrent_runs: int = Field(
        default=4, gt=0, description="Compositions the server runs at once."
    )
    server_max_queued_runs: int = Field(
        default=16, ge=0,
        description="Compositions that may wait for a free slot; beyond them requests get 429.",
    )
    server_run_timeout_s: float = Field(
        default=900, gt=0, description="Seconds one composition may take before it is stopped."
    )
    server_allow_image_urls: bool = Field(
        default=False,
        description="Let requests give the image as an http(s) URL the server fetches; off by "
        "default, since fetching arbitrary URLs from a server is a request-forgery risk.",
    )
    server_image_url_networks: str = Field(
        default="",
        description="Comma-separated networks (CIDR) that image URLs may reach besides public "
        "addresses, e.g. an internal image store; loopback, private and link-local addresses "
        "are refused unless listed.",
    )
    server_allowed_hosts: str = Field(
        default="",
        description="Comma-separated host names a server without IMG2MUSIC_API_KEY answers to "
        "besides loopback ones (127.0.0.1, localhost, ::1); other Host headers get 400, which "
        "stops DNS-rebinding pages.",
    )
    vllm_model: str | None = Field(
        default=None,
        description="Hugging Face id or path that `img2music vlm serve` loads; unset uses "
        "vlm_model. It is served under the name vlm_model either way.",
    )
    vllm_port: int = Field(
        default=8001, gt=0, lt=65536,
        description="Port of `img2music vlm serve`; vlm_base_url points at it by default.",
    )
    vllm_host: str = Field(default="127.0.0.1", description="Address `img2music vlm serve` binds.")
    vllm_max_model_len: int = Field(
        default=16_384, gt=0,
        description="Context length vLLM allocates: the image, k examples and a long tune fit in "
        "16k tokens.",
    )
    vllm_gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Share of GPU memory vLLM may take."
    )
    vllm_extra_args: str = Field(
        default="", description="More `vllm serve` flags, split as a shell would (never run "
        "through a shell)."
    )
    judge_base_url: str | None = Field(
        default=None,
        description="OpenAI-compatible endpoint of the multimodal judge that `img2music eval` "
        "asks the human study's questions; unset: the VLM's endpoint (the composer judges "
        "itself, which the summary says).",
    )
    judge_model: str | None = Field(
        default=None, description="Model the judge endpoint serves; unset: the VLM's model."
    )
    judge_api_key: SecretStr | None = Field(
        default=None, description="API key for the judge endpoint; unset: the VLM's key."
    )
    judge_profile: ProfileSetting | None = Field(
        default=None,
        description="The judge endpoint's profile (as IMG2MUSIC_VLM_PROFILE); unset: the VLM's "
        "setting when the judge is the VLM's endpoint, `auto` when it has its own.",
    )
    judge_temperature: float = Field(
        default=0.7, ge=0, le=2,
        description="Judge sampling temperature; above 0 so that repeated answers differ and "
        "their mean says more than one answer.",
    )
    judge_repeats: int = Field(
        default=3, ge=1, le=20,
        description="Times the judge answers each question for each tune; the answers are "
        "averaged.",
    )
    judge_max_tokens: int = Field(
        default=1024, gt=0,
        description="Most tokens per judge answer (room for a reasoning model's thoughts).",
    )
    log_level: str = Field(default="WARNING", description="Logging level for library messages.")

    @field_validator("server_image_url_networks")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        for network in _items(value):
            ip_network(network, strict=False)
        return value

    @property
    def rag_source_list(self) -> list[str]:
        return _items(self.rag_sources)

    @property
    def image_url_networks(self) -> list[IPv4Network | IPv6Network]:
        """The extra networks image URLs may reach."""
        return [ip_network(network, strict=False) for network in
                _items(self.server_image_url_networks)]

    @property
    def allowed_hosts(self) -> list[str]:
        """Host names a keyless server answers to, besides loopback ones, lower-case."""
        return [host.lower() for host in _items(self.server_allowed_hosts)]

    @property
    def judge_endpoint(self) -> str:
        """The judge's endpoint: its own, else the composer's."""
        return self.judge_base_url or self.vlm_base_url

    @property
    def judge_profile_choice(self) -> ProfileSetting:
        """The judge's profile setting: its own, else the VLM's on the VLM's endpoint."""
        if self.judge_profile is not None:
            return self.judge_profile
        return self.vlm_profile if self.judge_base_url is None else "auto"

    @property
    def judge_profile_setting(self) -> str:
        """The variable the judge's profile setting comes from, for messages."""
        if self.judge_profile is None and self.judge_base_url is None:
            return "IMG2MUSIC_VLM_PROFILE"
        return "IMG2MUSIC_JUDGE_PROFILE"

    @property
    def judge_served_model(self) -> str:
        """The judge's model: its own, else the composer's."""
        return self.judge_model or self.vlm_model

    @property
    def index_dir(self) -> Path:
        """Where the Chroma index lives."""
        return self.data_dir / "index"

    def find_soundfont(self) -> Path | None:
        """The configured SoundFont, or the first General MIDI one from Debian's packages."""
        if self.soundfont is not None:
            return self.soundfont if self.soundfont.is_file() else None
        return next((path for path in SOUNDFONT_CANDIDATES if path.is_file()), None)


def _items(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process; tests clear the cache after changing the environment."""
    return Settings()
