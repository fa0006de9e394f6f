"""A recipe inside every image: the request that made it, readable back as a manifest.

JPEG gets an XMP packet (an APP1 segment); PNG gets a tEXt chunk with the recipe and an XMP
iTXt chunk. Both are spliced into the bytes the API sent: the pixels that were paid for are
never re-encoded.

The XMP packet also fills the standard fields photo managers and exiftool read: the prompt as
dc:description, the tool as xmp:CreatorTool, and IPTC's digital source type
"trainedAlgorithmicMedia" (the marker for AI-generated media). A PNG also gets `Description`
and an A1111-style `parameters` text, which image-generation tools read.
"""

from __future__ import annotations

import html
import io
import json
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

FORMAT = "batch-runner-recipe/1"
PNG_KEY = "batch_runner_recipe"
DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
MODEL = "Ideogram Turbo (Segmind)"
_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_RECIPE = re.compile(rb"<br:recipe>(.*?)</br:recipe>", re.S)


def make(item_id: str, params: dict[str, Any], meta: dict[str, Any], job: str, seed_value: int | None) -> dict:
    return {
        "format": FORMAT,
        "api": "segmind/ideogram-turbo-txt-2-img",
        "job": job,
        "item_id": item_id,
        "params": params,
        "seed_value": seed_value,
        "meta": meta,
    }


def _xmp(recipe: dict) -> bytes:
    text = html.escape(json.dumps(recipe, ensure_ascii=False, sort_keys=True), quote=False)
    prompt = html.escape(str(recipe.get("params", {}).get("prompt", "")), quote=False)
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:br="https://batch-runner.invalid/ns/recipe/1.0/"'
        ' xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"'
        ' xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/">'
        f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{prompt}</rdf:li></rdf:Alt></dc:description>'
        f"<xmp:CreatorTool>batch-runner, {MODEL}</xmp:CreatorTool>"
        f"<Iptc4xmpExt:DigitalSourceType>{DIGITAL_SOURCE_TYPE}</Iptc4xmpExt:DigitalSourceType>"
        f"<br:recipe>{text}</br:recipe></rdf:Description></rdf:RDF></x:xmpmeta>"
    ).encode()


def parameters_text(recipe: dict) -> str:
    """The request in the `parameters` convention of A1111-style tools: prompt, then settings."""
    params = recipe.get("params", {})
    lines = [str(params.get("prompt", ""))]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    settings = [f"Model: {MODEL}"]
    seed = params.get("seed", recipe.get("seed_value"))
    for label, value in (
        ("Seed", seed),
        ("Style", params.get("style_type")),
        ("Resolution", params.get("resolution")),
        ("Magic prompt", params.get("magic_prompt_option")),
        ("Palette", json.dumps(params["color_palette"], sort_keys=True) if params.get("color_palette") else None),
    ):
        if value is not None:
            settings.append(f"{label}: {value}")
    lines.append(", ".join(settings))
    return "\n".join(lines)


def _embed_jpeg(data: bytes, recipe: dict) -> bytes:
    payload = _XMP_HEADER + _xmp(recipe)
    if len(payload) + 2 > 0xFFFF or data[:2] != b"\xff\xd8":
        return data  # an APP1 segment holds 64 KiB; a recipe that large is not worth a broken file
    position = 2
    if data[2:4] == b"\xff\xe0":  # keep JFIF's APP0 first, as readers expect
        position = 4 + struct.unpack(">H", data[4:6])[0]
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:position] + segment + data[position:]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _itxt(keyword: str, text: str) -> bytes:
    # iTXt, not tEXt: a prompt is UTF-8, and tEXt holds only Latin-1.
    return _png_chunk(b"iTXt", keyword.encode("latin-1") + b"\x00\x00\x00\x00\x00" + text.encode("utf-8"))


def _embed_png(data: bytes, recipe: dict) -> bytes:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return data
    prompt = str(recipe.get("params", {}).get("prompt", ""))
    card = json.dumps(recipe, ensure_ascii=True, sort_keys=True).encode()
    chunks = [
        _png_chunk(b"tEXt", PNG_KEY.encode() + b"\x00" + card),
        _itxt("Description", prompt),
        _itxt("parameters", parameters_text(recipe)),
        _itxt("XML:com.adobe.xmp", _xmp(recipe).decode("utf-8")),
    ]
    header_end = 8 + 8 + struct.unpack(">I", data[8:12])[0] + 4  # after IHDR
    return data[:header_end] + b"".join(chunks) + data[header_end:]


def embed(data: bytes, extension: str, recipe: dict) -> bytes:
    """The image bytes with the recipe added; unchanged for formats without a place for it."""
    if extension == "jpg":
        return _embed_jpeg(data, recipe)
    if extension == "png":
        return _embed_png(data, recipe)
    return data


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(marker, payload) of each segment before the image data: APP0 … APP15, COM, tables."""
    position = 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no metadata past here
            return
        length = struct.unpack(">H", data[position + 2 : position + 4])[0]
        yield marker, data[position + 4 : position + 2 + length]
        position += 2 + length


def _jpeg_xmp(path: Path) -> bytes | None:
    # Read from the bytes, not from Pillow's info["xmp"]: Pillow puts a JPEG's XMP there only
    # from 10.4, and the declared minimum is 10.1.
    data = path.read_bytes()
    if data[:2] != b"\xff\xd8":
        return None
    for marker, payload in _jpeg_segments(data):
        if marker == 0xE1 and payload.startswith(_XMP_HEADER):
            return payload[len(_XMP_HEADER) :]
    return None


def read(path: Path) -> dict | None:
    """The recipe an image carries, or None."""
    with Image.open(path) as image:
        info = dict(image.info)
        kind = image.format
    if PNG_KEY in info:
        return json.loads(info[PNG_KEY])
    xmp = _jpeg_xmp(path) if kind == "JPEG" else info.get("xmp")
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    if isinstance(xmp, bytes) and (match := _XMP_RECIPE.search(xmp)):
        return json.loads(html.unescape(match.group(1).decode("utf-8")))
    return None


def as_manifest(recipe: dict, source: str) -> str:
    """A one-item YAML manifest that sends the same request again."""
    params = dict(recipe.get("params", {}))
    notes = [f"# Recipe read from {source}: item {recipe.get('item_id')} of job {recipe.get('job')}."]
    if "seed" not in params and recipe.get("seed_value") is not None:
        params["seed"] = recipe["seed_value"]
        notes.append("# The request named no seed; the server used the one below, so it is pinned here.")
    if params.get("magic_prompt_option", "AUTO") != "OFF":
        notes.append("# Magic prompt was not OFF: the provider may rewrite the prompt, so the image can differ.")
    prompt = params.get("prompt")
    if isinstance(prompt, str) and ("{" in prompt or "}" in prompt):
        params["prompt"] = prompt.replace("{", "{{").replace("}", "}}")  # a manifest prompt is a template
    if recipe.get("meta"):
        notes.append("# Metadata of the original item: " + json.dumps(recipe["meta"], ensure_ascii=False))
    notes.append("# Run it with: batch-runner run THIS_FILE.yaml")
    document = {"name": f"recipe-{recipe.get('item_id', 'image')}", "defaults": params}
    buffer = io.StringIO()
    yaml.safe_dump(document, buffer, allow_unicode=True, sort_keys=False, width=1000)
    return "\n".join(notes) + "\n" + buffer.getvalue()
