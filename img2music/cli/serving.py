"""`img2music serve`, `img2music doctor` and `img2music vlm serve`: the server, what the
configured path needs, and the model host."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from img2music.cli.output import console, errors
from img2music.settings import get_settings

vlm_app = typer.Typer(help="Host the vision-language model (Keye-VL-8B) with vLLM.",
                      no_args_is_help=True)


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to bind; loopback by default.")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="0 takes a free port (printed).")] = 8000,
) -> None:
    """Serve the web page, the OpenAI-compatible endpoint (model `img2music`) and runs' files;
    the index runs search is built in the background as it starts, when it is not yet."""
    import uvicorn

    from img2music.pipeline.readiness import no_model_answers
    from img2music.server.middleware import LOOPBACK_HOSTS

    settings = get_settings()
    if host not in LOOPBACK_HOSTS and settings.api_key is None:
        errors.print(f"[yellow]warning:[/yellow] serving on {host} without IMG2MUSIC_API_KEY: "
                     "anyone who can reach this address can spend your model's time; requests "
                     "are answered only for loopback host names and "
                     "IMG2MUSIC_SERVER_ALLOWED_HOSTS")
    help_text = no_model_answers(settings)
    if help_text is not None:  # serve anyway: the model may come up later, /health says when
        errors.print(Text.assemble(("warning: ", "yellow"), help_text))
    from img2music.pipeline.index_build import IndexBuild, first_use_source
    from img2music.server.app import create_app

    source = first_use_source(settings)
    server = create_app(settings, index_build=IndexBuild(settings, source) if source else None)
    config = uvicorn.Config(server, host=host, port=port, log_level=settings.log_level.lower(),
                            timeout_graceful_shutdown=5)
    listening = config.bind_socket()  # bound first, so the port printed is the one served
    port = listening.getsockname()[1]
    console.print(f"img2music on http://{host}:{port}/ (the page) and http://{host}:{port}/v1 "
                  f"(model img2music); runs in {settings.data_dir / 'runs'}", highlight=False)
    uvicorn.Server(config).run(sockets=[listening])


STATUS_STYLE = {"ok": "[green]ok[/green]", "warning": "[yellow]warning[/yellow]",
                "missing": "[red]missing[/red]"}


def doctor() -> None:
    """Check what the configured path needs, and say how to fix what is missing."""
    from img2music.pipeline.readiness import doctor_checks, no_model_answers

    settings = get_settings()
    checks = doctor_checks(settings)
    table = Table(show_lines=False)
    for column in ("check", "status", "found", "fix"):
        table.add_column(column, overflow="fold")
    for check in checks:
        table.add_row(escape(check.name), STATUS_STYLE[check.status], escape(check.detail),
                      escape(check.fix))
    console.print(table)
    missing = [check.name for check in checks if not check.ok]
    help_text = no_model_answers(settings) if "VLM endpoint" in missing else None
    if help_text is not None:
        console.print(Text(help_text))
    if missing:
        errors.print(f"[red]not ready:[/red] {', '.join(missing)}")
        raise typer.Exit(1)
    console.print("[green]ready[/green]: the configured path can run")


@vlm_app.command("serve")
def vlm_serve(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command, run nothing.")] = (
        False),
) -> None:
    """Run `vllm serve` for the configured model with the flags Keye-VL needs."""
    import os
    import shlex
    import shutil

    from img2music.server.vllm.launch import INSTALL_HINT, vllm_command, vllm_environment

    settings = get_settings()
    executable = shutil.which("vllm")
    command = vllm_command(settings, executable or "vllm")
    environment = vllm_environment(settings, os.environ)
    keyed = " (the API key in its environment: VLLM_API_KEY)" \
        if "VLLM_API_KEY" in environment else ""
    if dry_run:
        console.print(shlex.join(command), highlight=False, soft_wrap=True)
        if keyed:
            errors.print(keyed.strip(" ()"), highlight=False)
        return
    if executable is None:
        errors.print(Text(f"error: {INSTALL_HINT}"))
        raise typer.Exit(1)
    console.print(f"starting: {shlex.join(command)}{keyed}", highlight=False)
    os.execve(executable, command, environment)
