"""The names of a scene run's files: ``<stem>.<kind>`` in the output directory, defined once.

``geoseg run`` writes them, ``geoseg vectorize`` finds a class map's confidence raster by
them, ``geoseg batch`` checks and cleans them, ``geoseg evaluate`` reads the class map.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SCENE_OUTPUTS", "kind_glob", "output_paths", "scene_file", "sibling_confidence"]

#: The file kinds a scene run writes, ``<stem>.<kind>`` (the manifest last); ``*`` stands for
#: a mask head's name (one quicklook per head).
SCENE_OUTPUTS = (
    "classes.tif",
    "classes.tif.aux.xml",
    "classes.qml",
    "confidence.tif",
    "mask.tif",
    "mask.tif.aux.xml",
    "mask.qml",
    "gpkg",
    "classes.png",
    "thumb.png",
    "legend.png",
    "mask-*.png",
    "stac.json",
    "run.json",
)


def scene_file(out_dir: Path, stem: str, kind: str) -> Path:
    """The path of a scene run's file of ``kind`` (one of :data:`SCENE_OUTPUTS`)."""
    return Path(out_dir) / f"{stem}.{kind}"


def kind_glob(stem: str, kind: str) -> str:
    """A glob pattern for ``<stem>.<kind>`` (a ``*`` in ``kind`` matches a mask head's name)."""
    import glob

    return f"{glob.escape(stem)}.{glob.escape(kind).replace('[*]', '*')}"


def output_paths(out_dir: Path, stem: str, has_masks: bool, vectorize: bool = True, stac: bool = False) -> dict[str, Path]:
    """The final output paths of a scene run (the manifest, written last, comes last)."""
    paths = {"classes": scene_file(out_dir, stem, "classes.tif"), "confidence": scene_file(out_dir, stem, "confidence.tif")}
    if has_masks:
        paths["mask"] = scene_file(out_dir, stem, "mask.tif")
    if vectorize:
        paths["vectors"] = scene_file(out_dir, stem, "gpkg")
    if stac:
        paths["stac"] = scene_file(out_dir, stem, "stac.json")
    paths["manifest"] = scene_file(out_dir, stem, "run.json")
    return paths


def sibling_confidence(classes_path) -> Path | None:
    """The ``<stem>.confidence.tif`` that ``geoseg run`` wrote next to ``<stem>.classes.tif``."""
    p = Path(classes_path)
    if p.name.endswith(".classes.tif"):
        conf = p.with_name(p.name[: -len(".classes.tif")] + ".confidence.tif")
        if conf.exists():
            return conf
    return None
