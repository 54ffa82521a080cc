"""The `vllm serve` command for Keye-VL, built from the settings, so the flags live in one place;
its API key goes in the environment, never on the command line.

Keye's model code ships with its weights (`--trust-remote-code`); one image per prompt keeps
vLLM from reserving memory for more; prefix caching lets the repair and refine turns reuse the
instructions, image and examples they repeat. Unless the ABC grammar is off, vLLM compiles it
with xgrammar, the backend its tests run on (`auto` may pick guidance for some grammars). No
`--reasoning-parser` is needed: the grammar itself leaves Keye's <think> block free, so think
mode and the constraint work together from the first token; a server started with
`--reasoning-parser qwen3` (Keye-VL-8B's language model is Qwen3's) works too, applying the
grammar after </think> and returning the reasoning in a field of its own.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping

from img2music.settings import Settings

INSTALL_HINT = ("vLLM is not installed here: on a machine with an NVIDIA GPU, "
                "pip install 'img2music[vllm]' (docs/serving.md says which versions)")


def vllm_command(settings: Settings, executable: str = "vllm") -> list[str]:
    """Arguments of `vllm serve`, never a shell line: extra flags are split, not interpreted."""
    command = [
        executable, "serve", settings.vllm_model or settings.vlm_model,
        "--served-model-name", settings.vlm_model,
        "--host", settings.vllm_host,
        "--port", str(settings.vllm_port),
        "--trust-remote-code",
        "--limit-mm-per-prompt", json.dumps({"image": 1}),
        "--max-model-len", str(settings.vllm_max_model_len),
        "--enable-prefix-caching",
        "--gpu-memory-utilization", str(settings.vllm_gpu_memory_utilization),
    ]
    if settings.vlm_grammar != "off":
        command += ["--structured-outputs-config.backend", "xgrammar"]
    return command + shlex.split(settings.vllm_extra_args)


def vllm_environment(settings: Settings, base: Mapping[str, str]) -> dict[str, str]:
    """`base` with the API key vLLM requires of clients as `VLLM_API_KEY`, which `vllm serve`
    reads when no `--api-key` is given: a key on the command line is readable by every user of
    the machine (`ps`, /proc), the environment only by the process's owner."""
    environment = dict(base)
    key = settings.vlm_api_key.get_secret_value()
    if key not in ("", "EMPTY"):
        environment["VLLM_API_KEY"] = key
    return environment
