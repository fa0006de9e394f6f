"""Column and key names: which API parameter a name means, which names nearly mean one (and so
are refused rather than quietly kept as metadata), and metadata names that clash with the tool's
own columns (renamed meta_<name>).

One rule for a CSV/TSV header and for the parameter keys of a YAML manifest: case, spaces,
hyphens and underscores do not matter ('Style Type' is style_type); a name within a typo of a
parameter ('StyleType', 'Seeds', 'style', 'negative prompt') is an error that names the parameter
meant, because its values would otherwise be sent as the API's defaults; and a name that starts
with meta_ is metadata, whatever follows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from batch_runner.api import spec as api_spec
from batch_runner.job.items import OUTPUT_COLUMNS

META_PREFIX = "meta_"

# Names people give these parameters that no typo distance catches.
_ALIASES = {
    "style": "style_type",
    "styles": "style_type",
    "negative": "negative_prompt",
    "neg": "negative_prompt",
    "negprompt": "negative_prompt",
    "negatives": "negative_prompt",
    "palette": "color_palette",
    "colour": "color_palette",
    "color": "color_palette",
    "colours": "color_palette",
    "colors": "color_palette",
    "magic": "magic_prompt_option",
    "magicprompt": "magic_prompt_option",
    "size": "resolution",
    "res": "resolution",
    "aspectratio": "resolution",
}
_SQUASHED = {name.replace("_", ""): name for name in api_spec.PARAMETERS}


def normalized(name: str) -> str:
    """'Style Type', 'style-type' and ' STYLE_TYPE ' all read 'style_type'."""
    return re.sub(r"[\s_\-]+", "_", name.strip().lower()).strip("_")


def parameter_named(name: str) -> str | None:
    """The API parameter a column or key names (case, spaces, hyphens ignored), or None."""
    if not isinstance(name, str):
        return None
    lowered = normalized(name)
    return lowered if lowered in api_spec.PARAMETERS else None


def near_parameter(name: str) -> str | None:
    """The API parameter a name nearly spells (and so was probably meant), or None.

    None for a name that is a parameter, is marked meta_, or only starts with a parameter's name
    and says more ('prompt_id', 'seed_note'): those are metadata about the parameter."""
    if not isinstance(name, str) or parameter_named(name) or normalized(name).startswith(META_PREFIX):
        return None
    lowered = normalized(name)
    if any(lowered.startswith(p + "_") for p in api_spec.PARAMETERS):
        return None
    squashed = lowered.replace("_", "")
    if squashed in _ALIASES:
        return _ALIASES[squashed]
    if squashed in _SQUASHED:
        return _SQUASHED[squashed]
    for plain, parameter in _SQUASHED.items():
        if squashed.rstrip("s") == plain or squashed == plain + "es":
            return parameter
        # One typo in a short name, two in a long one: 'promt', 'sead', 'colourpalette'.
        allowed = 1 if len(plain) <= 6 else 2
        if abs(len(squashed) - len(plain)) <= allowed and squashed[:1] == plain[:1]:
            if _typos(squashed, plain, allowed) <= allowed:
                return parameter
    return None


def near_miss_message(name: str, parameter: str, where: str) -> str:
    """The error for a name that nearly spells a parameter: what it would do, and both fixes."""
    return (
        f"{where} {name!r} looks like the API parameter {parameter} but is not spelled as one, so its values "
        f"would not be sent; name it {parameter} to send them, or {META_PREFIX}{name.strip()} to keep it "
        "as metadata"
    )


def _typos(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (insertions, deletions, substitutions, swaps), capped."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, start=1):
            cost = 0 if ca == cb else 1
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        if min(current) > limit:
            return limit + 1
        previous2, previous = previous, current
    return previous[-1]


def clash_reason(column: str) -> str | None:
    """Why a metadata column cannot keep its name, or None when it can."""
    lowered = column.lower()
    if lowered in api_spec.PARAMETERS:
        return "clashes with an API parameter"
    if lowered in OUTPUT_COLUMNS:
        return "clashes with an output column"
    return None


def column_renames(columns: Iterable[str]) -> dict[str, str]:
    """Metadata columns that would clash with the tool's columns, renamed meta_<name>.

    Compared ignoring case, and again after renaming: with both 'status' and 'meta_status'
    columns, 'status' becomes 'meta_meta_status'.
    """
    names = list(dict.fromkeys(columns))
    taken = {n.lower() for n in names}
    renames: dict[str, str] = {}
    for name in names:
        if clash_reason(name) is None:
            continue
        new = f"meta_{name}"
        while new.lower() in taken or clash_reason(new):
            new = f"meta_{new}"
        taken.add(new.lower())
        renames[name] = new
    return renames
