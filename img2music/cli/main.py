"""The `img2music` command: the commands of each module, assembled in one Typer app."""

from __future__ import annotations

import logging

import typer

from img2music.cli import compose, evaluation, index, rework, serving, toolkit
from img2music.settings import get_settings

app = typer.Typer(
    help="Turn an image into music you can read, hear and understand.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def main() -> None:
    logging.basicConfig(level=get_settings().log_level.upper(), format="%(levelname)s %(message)s")


app.command()(toolkit.check)
app.command()(toolkit.render)
app.add_typer(index.app, name="index")
app.command("compose")(compose.compose_command)
app.command("pick")(compose.pick_command)
app.command("section")(rework.section_command)
app.command("continue")(rework.continue_command)
app.command()(serving.serve)
app.command()(serving.doctor)
app.add_typer(serving.vlm_app, name="vlm")
app.command("eval")(evaluation.eval_command)
