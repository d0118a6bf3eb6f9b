"""Offline validation of STAC JSON against the published schemas (../shared/data/stac-schemas).

No machine of the test suite reaches schemas.stacspec.org or stac-extensions.github.io:
every schema URL (core 1.0.0 and 1.1.0, the extensions, GeoJSON) is mapped to its copy on
disk by a ``referencing.Registry`` whose retrieve function refuses any URL it cannot map,
so a validation never touches the network. Tests skip when the copies are absent.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

#: The STAC JSON schemas (../shared/data/stac-schemas beside the checkout; not committed).
SCHEMAS = next((p / "shared" / "data" / "stac-schemas" for p in Path(__file__).resolve().parents
                if (p / "shared" / "data" / "stac-schemas").is_dir()), Path("/nonexistent"))

_PREFIXES = {
    "https://schemas.stacspec.org/": SCHEMAS / "core",
    "https://stac-extensions.github.io/": SCHEMAS / "ext",
    "https://geojson.org/schema/": SCHEMAS / "geojson",
}
_CORE = {"Feature": "item-spec/json-schema/item.json", "Catalog": "catalog-spec/json-schema/catalog.json",
         "Collection": "collection-spec/json-schema/collection.json"}


def stac_validator():
    """``validate(obj)``: validate a STAC Item, Catalog or Collection (dict) against the core
    schema of its ``stac_version`` and every schema in its ``stac_extensions``; raises
    ``jsonschema.ValidationError``. Skips the test when jsonschema or the schemas are absent."""
    jsonschema = pytest.importorskip("jsonschema")
    referencing = pytest.importorskip("referencing")
    if not SCHEMAS.is_dir():
        pytest.skip(f"STAC schemas not present at {SCHEMAS}")

    def retrieve(uri: str):
        for prefix, root in _PREFIXES.items():
            if uri.startswith(prefix):
                path = root / uri[len(prefix):].split("#")[0]
                if path.is_file():
                    return referencing.Resource.from_contents(json.loads(path.read_text()))
        raise LookupError(f"no offline copy of {uri}")  # never the network

    registry = referencing.Registry(retrieve=retrieve)

    def validate(obj: dict) -> None:
        core = f"https://schemas.stacspec.org/v{obj['stac_version']}/{_CORE[obj['type']]}"
        for uri in [core, *obj.get("stac_extensions", [])]:
            schema = retrieve(uri).contents
            jsonschema.Draft7Validator(schema, registry=registry).validate(obj)

    return validate
