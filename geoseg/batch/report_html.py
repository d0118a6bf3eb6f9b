"""The batch report as one self-contained HTML page (``report.html`` beside ``report.json``).

:func:`write_report_html` turns a batch report (the dict of ``report.json``) into a page
people open first after a scheduled run: the counts, a map of the scene footprints (inline
SVG, lon/lat) coloured by status, and per scene its status (a failed scene's one-line
message), its quicklook, its class areas as bars, time and throughput, input and model, and
links to its outputs. Everything the page shows is inside the file (CSS inline, quicklooks
as ``data:`` URIs, no script, no font or CDN): it works offline and from any folder; only
the links to the outputs are relative to where it is written.

What each scene shows comes from its run manifest and STAC Item (footprint, thumbnail,
classes and colours); a failed scene's footprint from its input's header when the input is
a local raster. :func:`report_from_catalog` rebuilds a report from an outputs' STAC Catalog
when ``report.json`` is gone. ``geoseg report`` is the command line over both.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any

from geoseg._files import atomic_write
from geoseg.errors import InputError, OutputError

__all__ = ["STATUS_COLORS", "build_report_html", "load_report", "report_from_catalog", "write_report_html"]

#: Fill colours of the statuses (the map and the badges).
STATUS_COLORS = {"done": "#2e7d32", "skipped": "#607d8b", "failed": "#c62828", "would-run": "#1565c0",
                 "would-skip": "#90a4ae"}


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _footprint(scene: dict, manifest: dict | None, item: dict | None) -> list[list[float]] | None:
    """The scene's outline in lon/lat: from its STAC Item, its manifest, or (a failed scene)
    its local input's header."""
    from geoseg.io.stac import footprint_wgs84

    geom = (item or {}).get("geometry")
    if isinstance(geom, dict) and geom.get("type") == "Polygon":
        return geom["coordinates"][0]
    try:
        if manifest:
            grid = manifest.get("output_grid") or manifest["input"]
            return footprint_wgs84(manifest["input"]["crs"], grid["transform"], grid["width"], grid["height"])[1]["coordinates"][0]
        path = Path(scene.get("input") or "")
        if "://" not in str(scene.get("input")) and path.is_file():
            from geoseg.io.raster import open_raster

            with open_raster(path, quiet=True) as ds:
                if ds.crs is None:
                    return None
                return footprint_wgs84(ds.crs.to_wkt(), list(ds.transform)[:6], ds.width, ds.height)[1]["coordinates"][0]
    except Exception:  # noqa: BLE001 - a scene without a footprint is listed, not mapped
        return None
    return None


def _data_uri(path: Path) -> str | None:
    try:
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError:
        return None


def _scene_view(scene: dict, base: Path) -> dict[str, Any]:
    """What the page shows of one scene (a dict of plain values)."""
    manifest = _json(Path(scene["manifest"])) if scene.get("manifest") else None
    item = _json(Path(scene["stac_item"])) if scene.get("stac_item") else None
    out_dir = Path(scene.get("out_dir") or ".")
    outputs = (manifest or {}).get("outputs") or {}
    thumb = outputs.get("thumb.png") or outputs.get("classes.png")
    links = []
    for kind, label in (("classes.tif", "class map"), ("gpkg", "polygons"), ("classes.png", "quicklook"),
                        ("stac.json", "STAC Item"), ("run.json", "manifest")):
        if kind in outputs or (kind == "run.json" and manifest):
            name = outputs[kind]["path"] if kind in outputs else Path(scene["manifest"]).name
            links.append((label, Path(os.path.relpath(out_dir / name, base)).as_posix()))
    colors = {c["name"]: c.get("color", "#999999") for c in (manifest or {}).get("classes", [])}
    model = (manifest or {}).get("model") or {}
    return {
        "id": str(scene["id"]),
        "status": str(scene["status"]),
        "reason": scene.get("reason") or "",
        "error": scene.get("error"),
        "input": str(scene.get("input") or ""),
        "model": f"{model.get('name', '')} ({model.get('ref', '')})" if model else "",
        "seconds": scene.get("seconds"),
        "megapixels": scene.get("megapixels"),
        "mpx_s": scene.get("mpx_s"),
        "areas": [(name, float(a), colors.get(name, "#999999")) for name, a in (scene.get("class_areas_m2") or {}).items()],
        "thumb": _data_uri(out_dir / thumb["path"]) if thumb else None,
        "footprint": _footprint(scene, manifest, item),
        "links": links,
    }


def _view_or_plain(scene: dict, base: Path) -> dict[str, Any]:
    """:func:`_scene_view`, or what ``report.json`` alone says when a scene's manifest or
    Item cannot be used (edited, truncated): a page is written whatever the outputs hold."""
    try:
        return _scene_view(scene, base)
    except Exception:  # noqa: BLE001
        return _scene_view({**scene, "manifest": None, "stac_item": None}, base)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _anchor(scene_id: str) -> str:
    return "scene-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in scene_id)


def _map_svg(views: list[dict], width: int = 640, height: int = 360) -> str:
    """Footprints on an equirectangular lon/lat map (cos(mid-latitude) aspect), one
    ``<polygon>`` per mapped scene, linked to its card."""
    rings = [(v, v["footprint"]) for v in views if v["footprint"]]
    if not rings:
        return '<p class="muted">No scene has a footprint to map.</p>'
    import math

    lons = [p[0] for _, r in rings for p in r]
    lats = [p[1] for _, r in rings for p in r]
    w0, e0, s0, n0 = min(lons), max(lons), min(lats), max(lats)
    kx = math.cos(math.radians((s0 + n0) / 2))
    span = max((e0 - w0) * kx, n0 - s0, 1e-9)
    pad = span * 0.08
    scale = min((width - 20) / (span + 2 * pad), (height - 20) / (span + 2 * pad))
    cx, cy = (w0 + e0) / 2 * kx, (s0 + n0) / 2

    def xy(lon: float, lat: float) -> str:
        return f"{width / 2 + (lon * kx - cx) * scale:.1f},{height / 2 - (lat - cy) * scale:.1f}"

    shapes, labels = [], []
    for v, ring in rings:
        color = STATUS_COLORS.get(v["status"], "#9e9e9e")
        pts = " ".join(xy(lon, lat) for lon, lat in ring)
        tip = f"{v['id']}: {v['status']}" + (f": {v['error']['message']}" if v["error"] else "")
        shapes.append(f'<a href="#{_anchor(v["id"])}"><polygon class="footprint status-{_esc(v["status"])}" '
                      f'data-scene="{_esc(v["id"])}" points="{pts}" fill="{color}" fill-opacity="0.45" '
                      f'stroke="{color}" stroke-width="1.5"><title>{_esc(tip)}</title></polygon></a>')
        if len(rings) <= 40:  # a label at the outline's centre (of its vertices)
            lon = sum(p[0] for p in ring[:-1]) / max(1, len(ring) - 1)
            lat = sum(p[1] for p in ring[:-1]) / max(1, len(ring) - 1)
            x, y = xy(lon, lat).split(",")
            labels.append(f'<text x="{x}" y="{y}" text-anchor="middle" dominant-baseline="middle">{_esc(v["id"])}</text>')
    scalebar = f"{(e0 - w0):.3f}&#176; x {(n0 - s0):.3f}&#176;  ({w0:.3f}, {s0:.3f}) to ({e0:.3f}, {n0:.3f})"
    return (f'<svg id="footprints" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="scene footprints">'
            f'<rect width="{width}" height="{height}" fill="#f4f6f8"/>{"".join(shapes)}'
            f'<g class="labels" font-size="11" fill="#1f2933" pointer-events="none">{"".join(labels)}</g></svg>'
            f'<div class="muted small">{scalebar} (lon/lat)</div>')


def _bars(areas: list[tuple[str, float, str]]) -> str:
    total = sum(a for _, a, _ in areas)
    if total <= 0:
        return ""
    segs, rows = [], []
    for name, a, color in areas:
        pct = 100 * a / total
        segs.append(f'<span style="width:{pct:.3f}%;background:{_esc(color)}" title="{_esc(name)}: '
                    f'{a / 1e6:.3f} km&#178; ({pct:.1f}%)"></span>')
        rows.append(f'<tr><td><i style="background:{_esc(color)}"></i>{_esc(name)}</td>'
                    f'<td class="num">{a / 1e6:,.3f}</td><td class="bar"><b style="width:{pct:.2f}%;'
                    f'background:{_esc(color)}"></b></td><td class="num">{pct:.1f}%</td></tr>')
    return (f'<div class="stack">{"".join(segs)}</div><table class="areas"><tr><th>class</th><th>km&#178;</th>'
            f'<th></th><th>share</th></tr>{"".join(rows)}</table>')


def _fmt(value: Any, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{format(value, spec)}{unit}"


def _card(v: dict) -> str:
    color = STATUS_COLORS.get(v["status"], "#9e9e9e")
    img = (f'<img src="{v["thumb"]}" alt="quicklook of {_esc(v["id"])}">' if v["thumb"]
           else '<div class="noimg">no quicklook</div>')
    err = ""
    if v["error"]:
        err = f'<p class="error">{_esc(v["error"].get("type", "Error"))}: {_esc(v["error"].get("message", ""))}</p>'
    links = " &middot; ".join(f'<a href="{_esc(href)}">{_esc(label)}</a>' for label, href in v["links"])
    facts = [("time", _fmt(v["seconds"], ".1f", " s") if v["status"] == "done" else "-"),
             ("throughput", _fmt(v["mpx_s"], ".2f", " Mpx/s")), ("size", _fmt(v["megapixels"], ".2f", " Mpx")),
             ("input", v["input"]), ("model", v["model"] or "-")]
    dl = "".join(f"<dt>{k}</dt><dd>{_esc(val)}</dd>" for k, val in facts)
    return (f'<section class="card" id="{_anchor(v["id"])}"><header><h3>{_esc(v["id"])}</h3>'
            f'<span class="badge" style="background:{color}">{_esc(v["status"])}</span></header>'
            f'<div class="body"><div class="ql">{img}</div><div class="info">{err}'
            f'<p class="muted small">{_esc(v["reason"])}</p><dl>{dl}</dl>{_bars(v["areas"])}'
            f'<p class="links">{links}</p></div></div></section>')


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;background:#eef1f4;color:#1f2933}
main{max-width:1180px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 10px}h3{font-size:15px;margin:0;word-break:break-all}
.muted{color:#52606d}.small{font-size:12px}
.counts span{display:inline-block;margin:8px 8px 0 0;padding:3px 10px;border-radius:12px;color:#fff;font-weight:600}
.top{display:flex;flex-wrap:wrap;gap:20px;align-items:flex-start}.top>.panel:last-child{flex:1;min-width:300px}
.panel{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:14px}
.legend i,.areas i{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px;vertical-align:-1px}
.legend{margin-top:6px}.legend span{margin-right:14px;font-size:12px}
table.summary{border-collapse:collapse;font-size:13px}table.summary td,table.summary th{padding:4px 10px;border-bottom:1px solid #e4e7eb;text-align:left}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:16px}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);overflow:hidden}
.card header{display:flex;justify-content:space-between;align-items:center;padding:10px 14px;border-bottom:1px solid #e4e7eb}
.badge{color:#fff;border-radius:10px;padding:2px 10px;font-size:12px;font-weight:600}
.body{display:flex;gap:14px;padding:12px 14px}
.ql{flex:0 0 200px}.ql img{max-width:200px;max-height:220px;display:block;image-rendering:pixelated;border:1px solid #d9e2ec;
background:repeating-conic-gradient(#f0f0f0 0 25%,#fff 0 50%) 0 0/12px 12px}
.noimg{width:200px;height:140px;display:flex;align-items:center;justify-content:center;background:#f4f6f8;color:#9aa5b1;border:1px dashed #cbd2d9}
.info{flex:1;min-width:0}
dl{display:grid;grid-template-columns:auto 1fr;gap:2px 10px;margin:6px 0;font-size:12.5px}dt{color:#52606d}dd{margin:0;word-break:break-all}
.error{background:#fdecea;color:#8e1c1c;border-left:4px solid #c62828;padding:6px 10px;margin:0 0 6px;font-size:13px;word-break:break-word}
.stack{display:flex;height:12px;border-radius:3px;overflow:hidden;margin:8px 0 4px;background:#e4e7eb}
.areas{border-collapse:collapse;font-size:12px;width:100%}.areas td,.areas th{padding:1px 6px 1px 0;text-align:left}
.areas td.bar{width:40%}.areas b{display:block;height:8px;border-radius:2px;min-width:1px}
.links{font-size:12.5px;margin:8px 0 0}a{color:#0b5cad}
"""


def build_report_html(report: dict, base: Path) -> str:
    """The page of ``report`` (a ``report.json`` dict), with links relative to ``base``."""
    views = [_view_or_plain(s, base) for s in report.get("scenes", [])]
    counts = report.get("counts") or {}
    badges = "".join(f'<span style="background:{STATUS_COLORS.get(k, "#9e9e9e")}">{n} {_esc(k)}</span>'
                     for k, n in counts.items())
    legend = "".join(f'<span><i style="background:{c}"></i>{k}</span>' for k, c in STATUS_COLORS.items()
                     if k in counts)
    rows = "".join(
        f'<tr><td><a href="#{_anchor(v["id"])}">{_esc(v["id"])}</a></td><td><span class="badge" '
        f'style="background:{STATUS_COLORS.get(v["status"], "#9e9e9e")}">{_esc(v["status"])}</span></td>'
        f'<td class="num">{_fmt(v["seconds"], ".1f") if v["status"] == "done" else "-"}</td>'
        f'<td class="num">{_fmt(v["mpx_s"], ".2f")}</td></tr>' for v in views)
    unmapped = [v["id"] for v in views if not v["footprint"]]
    note = (f'<p class="muted small">Not on the map (no footprint): {_esc(", ".join(unmapped))}</p>' if unmapped else "")
    warnings = "".join(f'<p class="error">warning: {_esc(w)}</p>' for w in report.get("warnings") or [])
    stac = report.get("stac_catalog")
    stac_link = (f' &middot; <a href="{_esc(Path(os.path.relpath(stac, base)).as_posix())}">STAC catalog of the outputs</a>'
                 if stac else "")
    title = f"geoseg batch: {Path(str(report.get('catalog', 'catalog'))).name}"
    seconds = report.get("seconds")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="generator" content="geoseg"><title>{_esc(title)}</title><style>{_CSS}</style></head>
<body><main>
<h1>{_esc(title)}</h1>
<div class="muted">catalog {_esc(report.get('catalog', ''))} &middot; started {_esc(report.get('started', ''))}
 &middot; {_fmt(seconds, '.1f', ' s')} &middot; {_esc((report.get('scheduler') or {}).get('scheduler', ''))}
 {'&middot; dry run' if report.get('dry_run') else ''}{stac_link}</div>
<div class="counts">{badges}</div>{warnings}
<div class="top"><div class="panel"><h2 style="margin-top:0">Scene footprints</h2>{_map_svg(views)}
<div class="legend">{legend}</div>{note}</div>
<div class="panel"><h2 style="margin-top:0">Scenes</h2><table class="summary"><tr><th>scene</th><th>status</th>
<th class="num">time s</th><th class="num">Mpx/s</th></tr>{rows}</table></div></div>
<h2>Scenes</h2><div class="cards">{"".join(_card(v) for v in views)}</div>
<p class="muted small">Written by geoseg from {_esc(Path(str(report.get('catalog', ''))).name)}'s report; self-contained
(quicklooks inline), links relative to this file.</p>
</main></body></html>
"""


def write_report_html(report: dict, path: str | os.PathLike) -> Path:
    """Write the page of ``report`` to ``path`` (temporary name, then rename)."""
    p = Path(path)
    text = build_report_html(report, p.parent.resolve())
    try:
        with atomic_write(p, "html-") as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write the report {p} ({exc.strerror or exc}): choose a writable path") from exc
    return p


def report_from_catalog(catalog_json: Path) -> dict:
    """A report dict for the Items of an outputs' STAC Catalog (each scene ``done`` as of
    its manifest), for when ``report.json`` is gone."""
    from geoseg.io.stac import asset_path, read_items

    scenes = []
    for item, item_file, _ in read_items(catalog_json):
        manifest_file = asset_path(item, item_file, "manifest")
        manifest = _json(manifest_file) or {}
        inp = manifest.get("input") or {}
        timings = manifest.get("timings_s") or {}
        scenes.append({
            "id": item.get("id"), "input": inp.get("path", ""), "out_dir": str(item_file.parent), "status": "done",
            "reason": f"as of {manifest.get('created', '?')}", "seconds": timings.get("total"),
            "megapixels": round(inp.get("width", 0) * inp.get("height", 0) / 1e6, 3) or None,
            "mpx_s": manifest.get("throughput_mpx_s"),
            "class_areas_m2": {c["name"]: c["area_m2"] for c in manifest.get("classes", [])},
            "manifest": str(manifest_file), "stac_item": str(item_file), "error": None,
        })
    cat = _json(catalog_json) or {}
    return {"catalog": cat.get("geoseg:outputs_of", str(catalog_json)), "started": "", "seconds": None,
            "scheduler": {}, "dry_run": False, "counts": {"done": len(scenes)} if scenes else {},
            "stac_catalog": str(catalog_json), "warnings": [], "scenes": scenes}


def load_report(source: str | os.PathLike) -> tuple[dict, Path]:
    """The report of ``source`` (a ``report.json``, or a directory holding one or an outputs'
    ``catalog.json``) and the default path of its page."""
    p = Path(source)
    if p.is_dir():
        if (p / "report.json").is_file():
            p = p / "report.json"
        elif (p / "catalog.json").is_file():
            return report_from_catalog(p / "catalog.json"), p / "report.html"
        else:
            raise InputError(f"{p} holds neither report.json nor catalog.json: give a batch report or the outputs' folder")
    if not p.is_file():
        raise InputError(f"{p} does not exist: give the report.json `geoseg batch --report` wrote, or its folder")
    data = _json(p)
    if data is None:
        raise InputError(f"{p} is not JSON: give the report.json `geoseg batch --report` wrote")
    if "geoseg_batch_report" in data:
        return data, p.with_suffix(".html")
    if data.get("type") == "Catalog":
        return report_from_catalog(p), p.with_name("report.html")
    raise InputError(f"{p} is neither a geoseg batch report nor a STAC Catalog: give report.json or catalog.json")
