"""The dataset card an export writes: README.md with Hugging Face front matter, and the licence
file it links to.

The front matter is what `datasets.load_dataset(DIR)` (and so the Hub) reads, so its
`dataset_info.features` must be exactly the columns the format's builder produces: for an
imagefolder the `image` column plus metadata.parquet's columns, for WebDataset the builder's own
columns (`__key__`, `__url__`, one per file extension, and `json` as a struct). It is written by
a YAML dumper, never by pasting strings, so a metadata column named `a: b` or holding a line
break stays one quoted key instead of breaking the YAML or adding keys of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import yaml

from batch_runner import __version__
from batch_runner.store.output_dir import write_atomic

LICENSE_FILE = "LICENSE.md"
# The Hub asks for a licence id and a link when the licence is `other`; the link may name a
# file of the repository, so it names the one written beside the card.
LICENSE_NAME = "generated-images-see-license-md"
_DTYPES = {"int64": "int64", "double": "float64", "string": "string", "bool": "bool"}
_SIZES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")]


@dataclass(frozen=True)
class Card:
    """What a card says: where the images came from and how the dataset is laid out."""

    title: str
    kind: str  # "imagefolder" or "webdataset"
    samples: int
    jobs: list[str]
    sandbox: bool  # placeholders drawn by the sandbox, not Ideogram's images
    image_extensions: list[str]  # WebDataset: one builder column per extension


def feature(kind: pa.DataType) -> dict[str, Any]:
    """One Arrow type as a Hugging Face feature (the YAML form `dataset_info.features` takes)."""
    if pa.types.is_struct(kind):
        return {"struct": [{"name": child.name, **feature(child.type)} for child in kind]}
    if pa.types.is_list(kind):
        inner = feature(kind.value_type)
        return {"list": inner.get("struct", inner.get("dtype"))}
    return {"dtype": _DTYPES.get(str(kind), "string")}


def features(kind: str, fields: pa.Schema, image_extensions: Iterable[str]) -> list[dict[str, Any]]:
    """The columns `load_dataset(DIR)` gives for this export, in the builder's own terms."""
    if kind == "imagefolder":
        return [{"name": "image", "dtype": "image"}, *({"name": f.name, **feature(f.type)} for f in fields)]
    record = pa.struct(list(fields))
    return [
        *({"name": ext, "dtype": "image"} for ext in sorted(image_extensions)),
        {"name": "txt", "dtype": "string"},
        {"name": "json", **feature(record)},
        {"name": "__key__", "dtype": "string"},
        {"name": "__url__", "dtype": "string"},
    ]


def front_matter(card: Card, fields: pa.Schema) -> dict[str, Any]:
    size = next((label for bound, label in _SIZES if card.samples < bound), "1M<n<10M")
    data_files = (
        [{"split": "train", "path": ["metadata.parquet", "images/*"]}]
        if card.kind == "imagefolder"
        else [{"split": "train", "path": "shard-*.tar"}]
    )
    return {
        "license": "other",
        "license_name": LICENSE_NAME,
        "license_link": LICENSE_FILE,
        "task_categories": ["text-to-image"],
        "tags": ["synthetic", "batch-runner", *(["placeholder"] if card.sandbox else [])],
        "size_categories": [size],
        # Named data files: the export's sizes.json and stats files must not make the Hub's
        # loader take the folder for a JSON dataset.
        "configs": [{"config_name": "default", "data_files": data_files}],
        "dataset_info": {"features": features(card.kind, fields, card.image_extensions)},
    }


def _body(card: Card) -> str:
    jobs = f" (job {', '.join(card.jobs)})" if card.jobs else ""
    layout = (
        "a Hugging Face imagefolder (`images/`, `metadata.parquet`)"
        if card.kind == "imagefolder"
        else "WebDataset shards (`shard-*.tar`: `<id>.jpg`, `<id>.txt` caption, `<id>.json` parameters; "
        "`sizes.json` and a `shard-*_stats.json` per finished shard)"
    )
    origin = (
        "**These are placeholder images drawn by batch-runner's local sandbox, not images made by "
        "Ideogram.** They show the request's text and are useful only for testing pipelines."
        if card.sandbox
        else "The images were generated with Segmind's Ideogram Turbo text-to-image API."
    )
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    return f"""
# {card.title}

{card.samples:,} images, exported by batch-runner {__version__}{jobs} as {layout} on {when}.

{origin}

- `text` is the exact prompt sent; every request parameter and the job's metadata columns are
  kept, and `seed_value` is the seed the server used. Each image also carries its recipe (XMP
  or PNG text) and the IPTC digital source type `trainedAlgorithmicMedia`.
- Load it with `datasets.load_dataset(PATH)`, PATH being this folder or its Hub repository.
- Licence: see `{LICENSE_FILE}` and set the licence under which you publish these images.
"""


def _license(card: Card) -> str:
    if card.sandbox:
        return (
            "# Licence\n\nThese images are placeholders drawn by batch-runner's sandbox (MIT-licensed code): "
            "they contain no model output. Replace this file if you publish them.\n"
        )
    return (
        "# Licence\n\nThese images were generated with Segmind's Ideogram Turbo API. Their use is governed "
        "by the provider's terms (Segmind's and Ideogram's). State here the licence under which you publish "
        "them, and change `license:` in README.md to match.\n"
    )


def write(to: Path, card: Card, fields: pa.Schema) -> None:
    """README.md (front matter + what is in it) and LICENSE.md, each written atomically."""
    front = yaml.safe_dump(front_matter(card, fields), sort_keys=False, allow_unicode=True, width=1000)
    write_atomic(to / "README.md", f"---\n{front}---\n{_body(card)}".encode())
    license_file = to / LICENSE_FILE
    if not license_file.exists():  # the user's own licence text is never overwritten
        write_atomic(license_file, _license(card).encode())
