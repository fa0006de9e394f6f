"""What the Segmind Ideogram Turbo API accepts, from docs/segmind-ideogram-turbo-api.md.

One module owns these rules so that the manifest validator and the sandbox cannot drift apart:
a value the planner accepts is a value the sandbox accepts, and the messages match.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

ENDPOINT = "https://api.segmind.com/v1/ideogram-turbo-txt-2-img"
# v2 answers a POST with a request id to poll (see "Asynchronous mode (v2)" in the fact sheet).
ENDPOINT_V2 = "https://api.segmind.com/v2/ideogram-turbo-txt-2-img"
PRICE_PER_IMAGE = 0.063
TYPICAL_LATENCY_S = 12.8

_RESOLUTION_SIZES = """
512_1536 576_1408 576_1472 576_1536 640_1024 640_1344 640_1408 640_1472 640_1536 704_1152
704_1216 704_1280 704_1344 704_1408 704_1472 720_1280 736_1312 768_1024 768_1088 768_1152
768_1216 768_1232 768_1280 768_1344 832_960 832_1024 832_1088 832_1152 832_1216 832_1248
864_1152 896_960 896_1024 896_1088 896_1120 896_1152 960_832 960_896 960_1024 960_1088
1024_640 1024_768 1024_832 1024_896 1024_960 1024_1024 1088_768 1088_832 1088_896 1088_960
1120_896 1152_704 1152_768 1152_832 1152_864 1152_896 1216_704 1216_768 1216_832 1232_768
1248_832 1280_704 1280_720 1280_768 1280_800 1312_736 1344_640 1344_704 1344_768 1408_576
1408_640 1408_704 1472_576 1472_640 1472_704 1536_512 1536_576 1536_640
""".split()
RESOLUTIONS: tuple[str, ...] = tuple(f"RESOLUTION_{s}" for s in _RESOLUTION_SIZES)
DEFAULT_RESOLUTION = "RESOLUTION_1024_1024"
STYLE_TYPES = ("GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME")
MAGIC_PROMPT_OPTIONS = ("AUTO", "ON", "OFF")
PALETTE_PRESETS = ("EMBER", "FRESH", "JUNGLE", "MAGIC", "MELON", "MOSAIC", "PASTEL", "ULTRAMARINE")
SEED_MIN, SEED_MAX = 100, 999_999
# An older provider page said 1..99999. Seeds we pick ourselves stay inside both readings.
SAFE_SEED_MAX = 99_999
PALETTE_MAX_MEMBERS = 8
WEIGHT_MIN, WEIGHT_MAX = 0.05, 1.0

PARAMETERS = (
    "prompt",
    "negative_prompt",
    "magic_prompt_option",
    "resolution",
    "seed",
    "style_type",
    "color_palette",
)

_HEX = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")


def endpoint_for(api: str) -> str:
    """Segmind's URL for an API mode: v1 for sync, v2 for async."""
    return ENDPOINT_V2 if api == "async" else ENDPOINT


def endpoint_mismatch(endpoint: str, api: str) -> str | None:
    """The URL to use instead when `endpoint` is the other API mode's, else None.

    v2 answers a POST with a queued job, not an image: posting to it as if it were v1 would pay
    for a job per attempt and never fetch one; and a v1 URL polled as v2 would bill every submit.
    (errors.EndpointMismatch words it, for the command with its flags, for run() with keywords.)
    """
    if api != "async" and "/v2/" in endpoint:
        return endpoint.replace("/v2/", "/v1/", 1)
    if api == "async" and "/v2/" not in endpoint:
        return endpoint.replace("/v1/", "/v2/", 1) if "/v1/" in endpoint else ENDPOINT_V2
    return None


def resolution_size(resolution: str | None) -> tuple[int, int]:
    """(width, height) of a resolution value; the API default when none is given."""
    _, w, h = (resolution or DEFAULT_RESOLUTION).split("_")
    return int(w), int(h)


def suggest(value: object, choices: tuple[str, ...] | list[str]) -> str | None:
    """The closest valid spelling of value, for 'did you mean' hints."""
    text = str(value).strip()
    by_upper = {c.upper(): c for c in choices}
    if text.upper() in by_upper:
        return by_upper[text.upper()]
    if choices is RESOLUTIONS and (size := re.findall(r"\d+", text)) and len(size) == 2:
        return nearest_resolution(int(size[0]), int(size[1]))
    close = difflib.get_close_matches(text.upper(), list(by_upper), n=1, cutoff=0.6)
    return by_upper[close[0]] if close else None


def nearest_resolution(width: int, height: int) -> str:
    """The valid resolution closest in shape first, then in size."""

    def distance(resolution: str) -> tuple[float, float]:
        w, h = resolution_size(resolution)
        shape = abs(math.log((w / h) / (max(width, 1) / max(height, 1))))
        return round(shape, 2), abs(w * h - width * height)

    return min(RESOLUTIONS, key=distance)


def _did_you_mean(value: object, choices: tuple[str, ...]) -> str:
    hint = suggest(value, choices)
    if hint:
        return f"did you mean {hint}?"
    if len(choices) <= 10:
        return "use one of " + ", ".join(choices)
    return f"use one of the {len(choices)} values RESOLUTION_<width>_<height> in the API fact sheet"


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str | None:
    if isinstance(value, str) and value in choices:
        return None
    return f"{name} {value!r} is not valid; {_did_you_mean(value, choices)}"


def check_prompt(value: Any, name: str = "prompt") -> str | None:
    if not isinstance(value, str):
        return f"{name} must be text, got {type(value).__name__} {value!r}; quote it in the manifest"
    if not value.strip():
        return f"{name} is empty; give the text to generate"
    return None


def check_negative_prompt(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"negative_prompt must be text, got {type(value).__name__} {value!r}; quote it"
    return None


def check_seed(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"seed {value!r} is not a whole number; use an integer from {SEED_MIN} to {SEED_MAX}"
    if not SEED_MIN <= value <= SEED_MAX:
        return f"seed {value} is out of range; use an integer from {SEED_MIN} to {SEED_MAX}"
    return None


def check_color_palette(value: Any) -> str | None:
    if isinstance(value, str):
        return _choice("color_palette preset", value, PALETTE_PRESETS)
    if not isinstance(value, dict):
        return (
            "color_palette must be a preset name or a mapping "
            "{name: PRESET} or {members: [{color_hex: '#RRGGBB', color_weight: 0.5}, ...]}"
        )
    keys = set(value)
    if keys == {"name"}:
        return _choice("color_palette preset", value["name"], PALETTE_PRESETS)
    if keys != {"members"}:
        return f"color_palette needs exactly one of 'name' or 'members', got {sorted(map(str, keys))}"
    members = value["members"]
    if not isinstance(members, list) or not 1 <= len(members) <= PALETTE_MAX_MEMBERS:
        return f"color_palette members must be a list of 1 to {PALETTE_MAX_MEMBERS} colours"
    for i, member in enumerate(members):
        where = f"color_palette member {i + 1}"
        if not isinstance(member, dict) or "color_hex" not in member:
            return f"{where} must be a mapping with color_hex, e.g. {{color_hex: '#FF8800'}}"
        extra = set(member) - {"color_hex", "color_weight"}
        if extra:
            return f"{where} has unknown key(s) {sorted(map(str, extra))}; use color_hex and color_weight"
        hex_value = member["color_hex"]
        if not isinstance(hex_value, str) or not _HEX.fullmatch(hex_value):
            return f"{where} color_hex {hex_value!r} is not a colour; write '#RGB' or '#RRGGBB' (quoted in YAML)"
        if "color_weight" in member:
            weight = member["color_weight"]
            if (
                isinstance(weight, bool)
                or not isinstance(weight, (int, float))
                or not (WEIGHT_MIN <= weight <= WEIGHT_MAX)
            ):
                return (
                    f"{where} color_weight {weight!r} is out of range; use a number from {WEIGHT_MIN} to {WEIGHT_MAX}"
                )
    return None


_CHECKS = {
    "prompt": check_prompt,
    "negative_prompt": check_negative_prompt,
    "magic_prompt_option": lambda v: _choice("magic_prompt_option", v, MAGIC_PROMPT_OPTIONS),
    "resolution": lambda v: _choice("resolution", v, RESOLUTIONS),
    "seed": check_seed,
    "style_type": lambda v: _choice("style_type", v, STYLE_TYPES),
    "color_palette": check_color_palette,
}


def check_param(name: str, value: Any) -> str | None:
    """A problem with one request field, phrased with its fix, or None when it is valid."""
    check = _CHECKS.get(name)
    if check is None:
        hint = suggest(name, PARAMETERS)
        fix = f"did you mean {hint}?" if hint else "API parameters are " + ", ".join(PARAMETERS)
        return f"unknown parameter {name!r}; {fix}"
    return check(value)


def check_request(body: Any) -> list[str]:
    """Every problem with a whole request body, as the sandbox reports them."""
    if not isinstance(body, dict):
        return ["the request body must be a JSON object"]
    problems = [p for name, value in body.items() if (p := check_param(name, value))]
    if "prompt" not in body:
        problems.insert(0, "prompt is required")
    return problems
