"""The score: abcm2ps engraves the filtered ABC as SVG, which is kept only when it is static
drawing, and then written anew from its parsed tree (`clean_svg`)."""

from __future__ import annotations

import re
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from img2music.settings import Settings, get_settings
from img2music.tools.abc.directives import filter_directives
from img2music.tools.files import write_atomic
from img2music.tools.programs import run_program
from img2music.tools.render.checks import RenderError, check_ran, check_size

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
SVG_NAMESPACE = f"{{{SVG_NS}}}"
# Static drawing only: no script, foreignObject, animation or embedded documents.
SAFE_SVG_ELEMENTS = frozenset({
    "svg", "g", "defs", "use", "symbol", "path", "text", "tspan", "title", "desc", "style",
    "rect", "circle", "ellipse", "line", "polyline", "polygon", "clipPath", "mask", "pattern",
    "marker", "linearGradient", "radialGradient", "stop", "metadata",
})
ET.register_namespace("", SVG_NS)
ET.register_namespace("xlink", XLINK_NS)
EXTERNAL_REFERENCE = re.compile(r"@import|url\(\s*['\"]?(?!#)|javascript:|expression\(", re.I)


def render_svg(abc: str, out: Path, *, settings: Settings | None = None) -> Path:
    """Engrave the first tune of `abc` with abcm2ps as one SVG page, checked to be static SVG."""
    settings = settings or get_settings()
    check_size("ABC text", len(abc.encode("utf-8")), settings.max_abc_bytes)
    with tempfile.TemporaryDirectory(prefix="img2music-svg-") as work:
        folder = Path(work)
        (folder / "tune.abc").write_text(filter_directives(abc).text, encoding="utf-8")
        # -g writes one SVG per tune, named from -O with a 3-digit tune count: score001.svg, …;
        # -S is abcm2ps's own secure mode (no %%format, %%EPS, %%beginps, %%postscript), kept
        # as a second line of defence behind the filter.
        result = run_program(
            ["abcm2ps", "-q", "-S", "-g", "-O", "score", "tune.abc"],
            cwd=folder, timeout_s=settings.program_timeout_s,
            max_file_bytes=settings.max_output_bytes,
        )
        svg = folder / "score001.svg"
        # abcm2ps exits with 1 after reporting errors in the music, yet still engraves the rest.
        check_ran("abcm2ps", result, svg, tolerated_status=1)
        return write_atomic(out, clean_svg(svg.read_bytes()))


def clean_svg(svg: bytes) -> bytes:
    """The score as browsers will see it: well-formed, static SVG, written anew from its tree.

    abcm2ps copies some values into the SVG as written, so a tune can smuggle in markup; the
    directive filter removes the directives known to do so, and this is the second line: an
    element or attribute beyond drawing and local references, or a processing instruction
    (abcm2ps writes none; one inside `<style>` was how a `%%musicfont` value broke out into
    HTML), refuses the score. Comments, the doctype and CDATA sections are dropped, since the
    returned SVG is serialised from the checked tree, never copied from the program's bytes.
    """
    builder = ET.TreeBuilder(insert_comments=False, insert_pis=True)
    try:
        root = ET.fromstring(svg, parser=ET.XMLParser(target=builder))
    except ET.ParseError as error:
        raise RenderError(f"abcm2ps wrote an SVG that is not well-formed XML: {error}") from error
    if root.tag not in (f"{SVG_NAMESPACE}svg", "svg"):
        raise RenderError(f"abcm2ps wrote <{root.tag}>, not an SVG document")
    for element in root.iter():
        if not isinstance(element.tag, str):  # comments are not kept: a processing instruction
            raise RenderError("the score holds a processing instruction; refused as markup "
                              "smuggled in")
        name = str(element.tag).removeprefix(SVG_NAMESPACE)
        if name not in SAFE_SVG_ELEMENTS:
            raise RenderError(f"the score holds a <{name}> element; refused as active content")
        for attribute, value in element.attrib.items():
            local = attribute.rpartition("}")[2].lower()
            if local.startswith("on") or (local == "href" and not value.startswith("#")):
                raise RenderError(f"the score holds a {local}= attribute; refused as active "
                                  "content")
            if EXTERNAL_REFERENCE.search(value):
                raise RenderError("the score refers to outside content; refused")
        if name == "style" and EXTERNAL_REFERENCE.search(element.text or ""):
            raise RenderError("the score's style sheet refers to outside content; refused")
    body = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + bytes(body)
