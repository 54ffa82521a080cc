"""`img2music serve`, `doctor` and `vlm serve` as a new user runs them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx

from img2music.server.vllm.launch import vllm_command
from img2music.settings import Settings
from tests.openai_server import scripted_server
from tests.serving import listening_port, refusing_port

IMG2MUSIC = str(Path(sys.executable).with_name("img2music"))


def run(tmp_path: Path, *arguments: str, **settings: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "COLUMNS": "400", "IMG2MUSIC_DATA_DIR": str(tmp_path / "data"),
                   **settings}
    return subprocess.run([IMG2MUSIC, *arguments], env=environment, capture_output=True,
                          text=True, timeout=300, check=False)


def doctor_table(stdout: str) -> dict[str, tuple[str, str, str]]:
    """Each check's row of the doctor's table: status, what was found, the fix."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")]
        if len(cells) == 6:
            rows[cells[1]] = (cells[2], cells[3], cells[4])
    return rows


def test_doctor_names_what_is_missing_with_the_fix(tmp_path: Path) -> None:
    with refusing_port() as port:
        down = run(tmp_path, "doctor", IMG2MUSIC_VLM_BASE_URL=f"http://127.0.0.1:{port}/v1")
    assert down.returncode == 1
    table = doctor_table(down.stdout)
    status, found, fix = table["VLM endpoint"]
    assert status == "missing" and f"127.0.0.1:{port}" in found and "img2music vlm serve" in fix
    for ready in ("abc2midi", "abcm2ps", "fluidsynth", "SoundFont", "Python packages"):
        assert table[ready][0] == "ok", (ready, table[ready])
    status, found, fix = table["index music21"]
    assert status == "warning" and "img2music index build" in fix
    assert "not built; it is built once, on first use" in found
    assert ("its build time is measured once the CLIP ViT-B-32 (laion2b_s34b_b79k) weights "
            "are downloaded") in found  # measuring would download them
    assert "not ready: VLM endpoint" in down.stderr


def test_doctor_passes_when_the_configured_path_can_run(tmp_path: Path) -> None:
    with scripted_server(lambda body: "") as vlm:
        ready = run(tmp_path, "doctor", IMG2MUSIC_VLM_BASE_URL=vlm.url,
                    IMG2MUSIC_VLM_MODEL=vlm.model, IMG2MUSIC_CLIP_MODEL="img2music-tiny",
                    IMG2MUSIC_CLIP_PRETRAINED="none")
        wrong_model = run(tmp_path, "doctor", IMG2MUSIC_VLM_BASE_URL=vlm.url,
                          IMG2MUSIC_VLM_MODEL="Kwai-Keye/Keye-VL-1_5-8B",
                          IMG2MUSIC_RAG_K="0")  # the model is the question here
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert "ready" in ready.stdout and "random weights" in ready.stdout
    status, found, _ = doctor_table(ready.stdout)["index music21"]
    assert status == "warning" and re.search(
        r"a whole build takes about \d+ (s|min) here with CLIP img2music-tiny \(none\) "
        r"\(measured on 16 tunes\)", found), found
    assert wrong_model.returncode == 1
    assert f"serves {vlm.model}, not Kwai-Keye/Keye-VL-1_5-8B" in wrong_model.stdout


def test_attention_without_a_local_model_is_missing(tmp_path: Path) -> None:
    with scripted_server(lambda body: "") as vlm:
        result = run(tmp_path, "doctor", IMG2MUSIC_VLM_BASE_URL=vlm.url,
                     IMG2MUSIC_VLM_MODEL=vlm.model, IMG2MUSIC_RAG_K="0",
                     IMG2MUSIC_EXPLAIN="attention")
    assert result.returncode == 1
    assert "IMG2MUSIC_ATTENTION_MODEL" in next(
        line for line in result.stdout.splitlines() if "attention model" in line)


def test_the_vllm_command_has_keyes_flags_and_the_settings(tmp_path: Path) -> None:
    dry = run(tmp_path, "vlm", "serve", "--dry-run",
              IMG2MUSIC_VLLM_MODEL="/models/keye", IMG2MUSIC_VLLM_MAX_MODEL_LEN="32768",
              IMG2MUSIC_VLLM_EXTRA_ARGS="--tensor-parallel-size 2 --dtype 'bfloat16'",
              IMG2MUSIC_VLM_API_KEY="secret")
    assert dry.returncode == 0, dry.stderr
    command = shlex.split(dry.stdout)
    assert Path(command[0]).name == "vllm" and command[1:3] == ["serve", "/models/keye"]
    assert "--trust-remote-code" in command and "--enable-prefix-caching" in command
    assert command[command.index("--served-model-name") + 1] == "Kwai-Keye/Keye-VL-8B-Preview"
    assert command[command.index("--limit-mm-per-prompt") + 1] == '{"image": 1}'
    assert command[command.index("--max-model-len") + 1] == "32768"
    assert command[command.index("--port") + 1] == "8001"
    assert "secret" not in dry.stdout and "--api-key" not in command  # in vLLM's environment
    assert "VLLM_API_KEY" in dry.stderr
    assert command[-4:] == ["--tensor-parallel-size", "2", "--dtype", "bfloat16"]


def test_vllm_compiles_the_grammar_with_xgrammar_unless_it_is_off(tmp_path: Path) -> None:
    on = vllm_command(Settings(data_dir=tmp_path, vlm_grammar="auto"))
    assert on[on.index("--structured-outputs-config.backend") + 1] == "xgrammar"
    assert "--reasoning-parser" not in on  # the grammar leaves Keye's <think> block free itself
    off = vllm_command(Settings(data_dir=tmp_path, vlm_grammar="off"))
    assert "--structured-outputs-config.backend" not in off


def test_vlm_serve_without_vllm_says_how_to_get_it(tmp_path: Path) -> None:
    result = run(tmp_path, "vlm", "serve", PATH="/usr/bin:/bin")
    assert result.returncode == 1
    assert "pip install 'img2music[vllm]'" in result.stderr


def test_serve_warns_when_it_is_open_without_a_key_and_answers(tmp_path: Path) -> None:
    environment = {**os.environ, "IMG2MUSIC_DATA_DIR": str(tmp_path / "data")}
    process = subprocess.Popen([IMG2MUSIC, "serve", "--host", "0.0.0.0", "--port", "0"],
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        announced = process.stdout.readline()  # the port the system gave it, before it serves
        port = listening_port(process)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=30)
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert f"img2music on http://0.0.0.0:{port}/" in announced
    assert models.json()["data"][0]["id"] == "img2music"
    assert "without IMG2MUSIC_API_KEY" in stderr
