"""Legends GIS tools show: GDAL category names and a thematic RAT in the COG's .aux.xml,
a QGIS default style (.qml) with exactly the classes, the colour table, the names kept
in the COG's own tags when the side-cars are lost; read back through GDAL and QGIS."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import read

CLASSES = [("low", "#1f78b4"), ("mid", "#33a02c"), ("high", "#e31a1c")]


def _gdal():
    """rasterio's GDAL library, with the few C functions that read categories and RATs."""

    from geoseg.io._libgdal import gdal_library_path as _gdal_library_path

    lib = ctypes.CDLL(_gdal_library_path())
    vp, ci, cs = ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p
    for name, res, args in [
        ("GDALOpen", vp, [cs, ci]),
        ("GDALClose", None, [vp]),
        ("GDALGetRasterBand", vp, [vp, ci]),
        ("GDALGetMetadata", ctypes.POINTER(cs), [vp, cs]),
        ("GDALGetRasterCategoryNames", ctypes.POINTER(cs), [vp]),
        ("GDALGetDefaultRAT", vp, [vp]),
        ("GDALRATGetRowCount", ci, [vp]),
        ("GDALRATGetColumnCount", ci, [vp]),
        ("GDALRATGetNameOfCol", cs, [vp, ci]),
        ("GDALRATGetUsageOfCol", ci, [vp, ci]),
        ("GDALRATGetTableType", ci, [vp]),
        ("GDALRATGetValueAsString", cs, [vp, ci, ci]),
    ]:
        f = getattr(lib, name)
        f.restype, f.argtypes = res, args
    return lib


def gdal_legend(path: Path) -> list[dict]:
    """Per band: GDAL's category names and the default RAT (type, columns, usages, rows)."""
    lib = _gdal()
    out = []
    with rasterio.Env():  # GDAL drivers registered
        ds = lib.GDALOpen(str(path).encode(), 0)
        assert ds, f"GDAL cannot open {path}"
        try:
            with rasterio.open(path) as r:
                count = r.count
            for b in range(1, count + 1):
                band = lib.GDALGetRasterBand(ds, b)
                lib.GDALGetMetadata(band, None)  # GDAL loads the .aux.xml (PAM) lazily
                names, cats = lib.GDALGetRasterCategoryNames(band), []
                i = 0
                while names and names[i] is not None:
                    cats.append(names[i].decode())
                    i += 1
                rat = lib.GDALGetDefaultRAT(band)
                table = None
                if rat:
                    ncol = lib.GDALRATGetColumnCount(rat)
                    table = {
                        "type": lib.GDALRATGetTableType(rat),
                        "columns": [lib.GDALRATGetNameOfCol(rat, c).decode() for c in range(ncol)],
                        "usages": [lib.GDALRATGetUsageOfCol(rat, c) for c in range(ncol)],
                        "rows": [
                            [lib.GDALRATGetValueAsString(rat, r, c).decode() for c in range(ncol)]
                            for r in range(lib.GDALRATGetRowCount(rat))
                        ],
                    }
                out.append({"categories": cats, "rat": table})
        finally:
            lib.GDALClose(ds)
    return out


def _run(args, **kw):
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "geoseg", *map(str, args)], capture_output=True, text=True, env=env, **kw, check=False)


@pytest.fixture(scope="module")
def run_out(tmp_path_factory, synth_scene, small_unet) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("legend_run")
    r = _run(["run", synth_scene[0], "-o", out, "-m", small_unet, "--tile-size", "128", "--quiet", "--json"])
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def test_class_map_names_and_rat_read_back_through_gdal(run_out) -> None:
    out, manifest = run_out
    cog = out / "scene.classes.tif"
    (band,) = gdal_legend(cog)
    assert band["categories"] == ["low", "mid", "high"]
    rat = band["rat"]
    assert rat["type"] == 0  # GRTT_THEMATIC
    assert rat["columns"] == ["Value", "Count", "ClassName", "Red", "Green", "Blue"]
    assert rat["usages"] == [5, 1, 2, 6, 7, 8]  # MinMax, PixelCount, Name, Red, Green, Blue
    counts = np.bincount(read(cog).ravel(), minlength=256)
    assert rat["rows"] == [
        [str(i), str(counts[i]), name, *(str(int(color[k : k + 2], 16)) for k in (1, 3, 5))]
        for i, (name, color) in enumerate(CLASSES)
    ]
    assert [c["pixels"] for c in manifest["classes"]] == [int(counts[i]) for i in range(3)]
    # the colour table: the classes' colours, nodata transparent
    with rasterio.open(cog) as ds:
        cmap = ds.colormap(1)
    assert [cmap[i][:3] for i in range(3)] == [tuple(int(c[k : k + 2], 16) for k in (1, 3, 5)) for _, c in CLASSES]
    assert cmap[255][3] == 0


def test_mask_bands_have_names_per_head(run_out) -> None:
    out, _ = run_out
    mask = out / "scene.mask.tif"
    (band,) = gdal_legend(mask)
    assert band["categories"] == ["not_bright", "bright"]
    values = read(mask)[0]
    zeros, ones = int((values == 0).sum()), int((values == 1).sum())
    assert [r[:3] for r in band["rat"]["rows"]] == [["0", str(zeros), "not_bright"], ["1", str(ones), "bright"]]


def test_sidecars_are_outputs_listed_in_manifest(run_out) -> None:
    out, manifest = run_out
    for kind in ("classes.tif.aux.xml", "classes.qml", "mask.tif.aux.xml", "mask.qml"):
        entry = manifest["outputs"][kind]
        assert entry["path"] == f"scene.{kind}"
        assert (out / entry["path"]).stat().st_size == entry["bytes"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_stac_item_lists_the_sidecars(tmp_path, synth_scene, small_unet) -> None:
    from geoseg import run_scene

    manifest = run_scene(synth_scene[0], tmp_path, small_unet, tile_size=128, quiet=True, stac=True, vectorize=False)
    item = json.loads((tmp_path / "scene.stac.json").read_text())
    assets = item["assets"]
    assert assets["classes_legend"]["href"] == "./scene.classes.tif.aux.xml"
    assert assets["classes_legend"]["roles"] == ["metadata"]
    assert assets["classes_style"]["href"] == "./scene.classes.qml"
    assert assets["mask_legend"]["href"] == "./scene.mask.tif.aux.xml"
    assert assets["classes_legend"]["file:size"] == manifest["outputs"]["classes.tif.aux.xml"]["bytes"]


def test_names_survive_the_loss_of_the_sidecars(tmp_path, run_out) -> None:
    out, _ = run_out
    lone = tmp_path / "copy.classes.tif"  # only the .tif copied: no .aux.xml, no .qml
    shutil.copy(out / "scene.classes.tif", lone)
    (band,) = gdal_legend(lone)
    assert band["categories"] == [] and band["rat"] is None
    with rasterio.open(lone) as ds:
        assert json.loads(ds.tags()["CLASS_NAMES"]) == ["low", "mid", "high"]
        assert ds.colormap(1)[1][:3] == (0x33, 0xA0, 0x2C)
    r = _run(["vectorize", lone, tmp_path / "v.gpkg", "--quiet", "--json"])
    assert r.returncode == 0, r.stderr
    import pyogrio

    names = set(pyogrio.read_dataframe(tmp_path / "v.gpkg", layer="classes", read_geometry=False)["class_name"])
    assert names <= {"low", "mid", "high"} and names


QGIS_PROBE = r"""
import json, os, sys
from qgis.core import QgsApplication, QgsRasterLayer
app = QgsApplication([], False)
app.initQgis()
out = {}
for path in sys.argv[1:]:
    layer = QgsRasterLayer(path, "layer")
    r = layer.renderer()
    out[path] = {
        "valid": layer.isValid(),
        "renderer": r.type() if r else None,
        "band": r.band() if r and r.type() == "paletted" else None,
        "classes": [[int(c.value), c.label, c.color.name(), c.color.alpha()] for c in r.classes()]
        if r and r.type() == "paletted" else None,
    }
print(json.dumps(out), flush=True)
os._exit(0)  # QGIS 3.22 may crash in exitQgis() when run headless
"""


def _qgis_python() -> str | None:
    py = "/usr/bin/python3"
    if not Path(py).exists():
        return None
    r = subprocess.run([py, "-c", "import qgis.core"], capture_output=True, timeout=120, check=False)
    return py if r.returncode == 0 else None


def test_qgis_lists_exactly_the_classes_by_name(tmp_path, run_out) -> None:
    py = _qgis_python()
    if py is None:
        pytest.skip("PyQGIS is not installed (Debian: apt-get install python3-qgis)")
    out, _ = run_out
    probe = tmp_path / "probe.py"
    probe.write_text(QGIS_PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(QT_QPA_PLATFORM="offscreen", XDG_RUNTIME_DIR=str(tmp_path))
    classes, mask = out / "scene.classes.tif", out / "scene.mask.tif"
    r = subprocess.run([py, str(probe), str(classes), str(mask)], capture_output=True, text=True, env=env, timeout=300, check=False)
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen[str(classes)]["valid"] and seen[str(classes)]["renderer"] == "paletted"
    assert seen[str(classes)]["classes"] == [[i, n, c, 255] for i, (n, c) in enumerate(CLASSES)]
    m = seen[str(mask)]
    assert m["renderer"] == "paletted" and m["band"] == 1
    assert [c[:2] for c in m["classes"]] == [[0, "not_bright"], [1, "bright"]]
