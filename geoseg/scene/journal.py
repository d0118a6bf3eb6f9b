"""Resume inside a scene: a journal of finished tiles beside the hidden partial outputs.

While a scene runs, its tiles are written into hidden "stripes" GeoTIFFs
(``.<stem>.classes.tif.stripes.partial.tif``, ...) that become the COGs at the end.
:class:`TileJournal` makes those files survive a kill:

- Every few seconds (:data:`CHECKPOINT_SECONDS`) the stripes are closed (GDAL writes its
  cached blocks and the tile index), ``fsync``-ed and reopened in update mode; only then
  are the tiles written so far appended to the journal
  (``.<stem>.run.json.journal.partial.jsonl``, one JSON line per tile: the tile's
  ``row``/``col`` on the tile grid, the ``window`` it wrote on the output grid and a
  CRC-32 of those pixels), and the journal is ``fsync``-ed. A tile in the journal was
  therefore on disk, in a file whose tile index points at it, when its line was written;
  a tile written after the last checkpoint is not in it and is simply redone.
- A tile is journaled only once its blocks are *sealed*: the stripes' blocks (512 px tiles,
  or strips of rows in small files) can hold several tiles, and GDAL (libtiff) rewrites a
  block that a later tile writes into, *in place* when its new compressed size fits the
  old one, before the next checkpoint updates the tile index: a kill in between would
  leave a block whose bytes no longer match the index. So :meth:`TileJournal.plan` counts
  the tiles that write into each block, and a finished tile waits (in memory) until every
  block it touches has all its tiles; only then can a checkpoint journal it, and no later
  write touches its blocks again. What holds after a kill: every journaled tile reads
  back with its CRC (unless the file was damaged since, which the CRC check catches and
  redoes); tiles in blocks not yet complete are redone.
- The journal's first line is a key: the input file (path, size, mtime), the model
  checksum, every output-shaping option, the tile grid and geoseg's version. A run with
  ``resume`` whose key differs discards the journal and the stripes and starts over.
- On restart every journaled tile is read back from the stripes at the window it wrote
  and its CRC checked: a tile whose window or pixels differ (a block torn by the kill, a
  damaged file) is redone. The finished outputs are the same bytes as an uninterrupted run's.

A tile's window is its core on the scene grid; with a resampled scene or an area of
interest it is where :meth:`geoseg.scene.view.SceneView.finish` maps the core onto the
(cropped) output grid (:meth:`~geoseg.scene.view.SceneView.written_window`). The
windows of different tiles never overlap, so each tile is checked on pixels only it wrote.

The journal and the stripes are removed once the outputs are committed. A failed or
interrupted run keeps them (hidden, never under a final name) for ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg._signals import critical
from geoseg.io.faults import writing
from geoseg.io.store import journal_path, stripes_path  # the store owns the names

__all__ = ["CHECKPOINT_SECONDS", "ResumeState", "TileJournal", "tile_crc"]

#: Seconds between checkpoints (a kill loses at most this much finished work, plus the
#: tiles in flight). ``GEOSEG_CHECKPOINT_SECONDS`` overrides it (0: after every tile).
CHECKPOINT_SECONDS = 10.0

JOURNAL_VERSION = 2  # 2: entries also carry the window written on the output grid (older journals start over)


def tile_crc(arrays: Sequence[np.ndarray | None]) -> int:
    """CRC-32 of a tile's product arrays (classes, confidence, masks), in that order."""
    crc = 0
    for a in arrays:
        if a is not None:
            crc = zlib.crc32(np.ascontiguousarray(a, dtype=np.uint8).tobytes(), crc)
    return crc


def journal_key(fields: dict) -> str:
    """A digest of everything that shapes the tiles (see the module docstring)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def input_identity(path: str | os.PathLike) -> dict:
    """Path, size and modification time of the input (what ``make`` and ``rsync`` compare)."""
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


@dataclass
class ResumeState:
    """What a journal says was finished: ``(row, col)`` of each tile core (on the tile
    grid) -> entry (``window``: ``[row, col, height, width]`` written on the output grid)."""

    tiles: dict[tuple[int, int], dict]


def _window_list(window) -> list[int]:
    return [int(window.row), int(window.col), int(window.height), int(window.width)]


def _entry(key: tuple[int, int], window, crc: int, skipped: bool) -> dict:
    """A journal line: the tile (its core's row and col on the tile grid), the window it
    wrote on the output grid, the CRC of its pixels and whether the model skipped it."""
    return {"row": int(key[0]), "col": int(key[1]), "window": _window_list(window), "crc": int(crc), "skipped": bool(skipped)}


def _checkpoint_seconds() -> float:
    raw = os.environ.get("GEOSEG_CHECKPOINT_SECONDS")
    if raw is None:
        return CHECKPOINT_SECONDS
    try:
        return max(0.0, float(raw))
    except ValueError:
        return CHECKPOINT_SECONDS


class TileJournal:
    """The journal of one scene run (see the module docstring).

    Use: :meth:`open` (reads a matching journal when resuming, else starts a new one),
    create the products on the :attr:`stripes` paths, :meth:`plan` the windows the tiles
    will write, :meth:`verify` the journaled tiles
    against the reopened stripes, then :meth:`record` tiles as they are written,
    :meth:`checkpoint` at the end of inference, and :meth:`discard` before the commit.

    ``out_dir`` is the output store's local scratch directory (the output directory
    itself for a local destination): the journal and the stripes need POSIX appends,
    random writes and ``fsync``, so they stay on a local disk whatever the destination.
    """

    def __init__(self, out_dir: Path, stem: str, key: str, finals: Sequence[Path]) -> None:
        self.out_dir = Path(out_dir)
        self.path = journal_path(self.out_dir, stem)
        self.key = key
        self.stripes = {Path(f): stripes_path(Path(f)) for f in finals}
        self.interval = _checkpoint_seconds()
        self.products: list = []
        self._pending: list[dict] = []  # sealed tiles' entries, journaled at the next checkpoint
        self._blocks: Callable | None = None  # window -> the ids of the stripes' blocks it touches
        self._left: dict = {}  # block id -> tiles still to write into it
        self._waiting: dict = {}  # block id -> [[entry, blocks not yet sealed], ...] of finished tiles
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._fh = None
        self.started = False  # a journal of this run is on disk (kept for --resume on failure)

    # ------------------------------------------------------------------ start
    def open(self, resume: bool) -> ResumeState | None:
        """Read the journal when ``resume`` and it matches; else remove any old journal and
        stripes. Returns the journaled tiles, or ``None`` when starting from scratch."""
        state = self._read() if resume else None
        if state is None:
            self.discard()
        return state

    def _read(self) -> ResumeState | None:
        if not self.path.exists() or not all(p.exists() for p in self.stripes.values()):
            return None
        tiles: dict[tuple[int, int], dict] = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                header = json.loads(f.readline())
                if header.get("geoseg_journal") != JOURNAL_VERSION or header.get("key") != self.key:
                    return None
                for line in f:
                    try:
                        e = json.loads(line)
                        e["window"] = [int(v) for v in e["window"]]
                        if len(e["window"]) != 4:
                            break
                        tiles[(int(e["row"]), int(e["col"]))] = e
                    except (ValueError, KeyError, TypeError):
                        break  # a line torn by the kill: nothing after it counts
        except (OSError, ValueError):
            return None
        return ResumeState(tiles)

    def plan(self, windows: Iterable, block_shapes: Sequence[tuple[int, int]]) -> None:
        """Declare the windows the run's tiles will write (resumed ones included) and the
        stripes' block shapes, ``(height, width)`` per product: a finished tile is then
        journaled only once every block it touches has all its tiles (see the module docstring)."""
        shapes = list(dict.fromkeys(tuple(int(v) for v in b) for b in block_shapes))

        def blocks(w) -> list[tuple]:
            return [(k, i, j) for k, (bh, bw) in enumerate(shapes)
                    for i in range(w.row // bh, (w.row + w.height - 1) // bh + 1)
                    for j in range(w.col // bw, (w.col + w.width - 1) // bw + 1)]

        left: dict = {}
        for w in windows:
            for b in blocks(w):
                left[b] = left.get(b, 0) + 1
        with self._lock:
            self._blocks, self._left, self._waiting = blocks, left, {}

    def _written(self, window, entry: dict) -> list[dict]:
        """Count ``window`` as written; return the entries of the finished tiles whose
        blocks are now all sealed (this one's included, when its are). Holds ``_lock``."""
        if self._blocks is None:
            return [entry]
        mine = self._blocks(window)
        item = [entry, 0]
        ready = []
        for b in mine:
            self._left[b] -= 1
            if self._left[b] > 0:
                item[1] += 1
                self._waiting.setdefault(b, []).append(item)
        if item[1] == 0:
            ready.append(entry)
        for b in mine:
            if self._left[b] == 0:
                for other in self._waiting.pop(b, ()):
                    other[1] -= 1
                    if other[1] == 0:
                        ready.append(other[0])
        return ready

    def verify(self, state: ResumeState, products: Sequence, tiles: Iterable, good: Callable,
               window_of: Callable | None = None) -> int:
        """Read every tile back from the stripes and check the journaled ones' CRCs.

        ``window_of(tile)`` is the window the tile writes on the output grid (default: its
        core). Calls ``good(tile, arrays, skipped)`` for each journaled tile whose window
        is the journaled one and whose pixels check out (``arrays``: the products'
        ``(count, h, w)`` values, ``None`` for an absent product); the others will be
        redone. Where a block cannot be read at all (a write cut short by a full disk), the
        stripes are rebuilt from the good tiles, so that redoing a tile never reads a
        damaged block. Rewrites the journal with the good tiles only and returns their number.
        """
        kept, damaged = [], False
        for t in tiles:
            e = state.tiles.get((t.core.row, t.core.col))
            win = window_of(t) if window_of is not None else t.core
            if win is None:
                continue  # writes nothing
            try:
                arrays = [p.read(win) if p is not None else None for p in products]
            except Exception:  # noqa: BLE001 - an unreadable block: redo the tile, rebuild the file
                damaged = True
                continue
            if e is None or e["window"] != _window_list(win) or tile_crc(arrays) != int(e["crc"]):
                continue  # not finished, written only in part before the kill, or damaged since
            good(t, arrays, bool(e.get("skipped", False)))
            kept.append((win, _entry((t.core.row, t.core.col), win, int(e["crc"]), bool(e.get("skipped", False)))))
        if damaged:
            for p in products:
                if p is not None:
                    p.rebuild([w for w, _ in kept])
        with self._lock:  # the kept tiles count as written; those in blocks still to be completed wait
            sealed = [r for w, e in kept for r in self._written(w, e)]
        self._start(sealed)
        return len(kept)

    def start_fresh(self) -> None:
        """Write a new journal holding only its key."""
        self._start([])

    def _start(self, entries: list[dict]) -> None:
        header = {"geoseg_journal": JOURNAL_VERSION, "key": self.key}
        tmp = self.path.with_name(self.path.name + ".tmp")
        with writing("the resume journal", self.out_dir):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(json.dumps(header) + "\n")
                f.writelines(json.dumps(e) + "\n" for e in entries)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - appended to until close()
        self.started = True

    # ------------------------------------------------------------------ while running
    def record(self, key: tuple[int, int], window, arrays: Sequence[np.ndarray | None], skipped: bool) -> None:
        """Note a tile whose products are all written: ``key``, the ``(row, col)`` of its
        core on the tile grid, and ``window``, where it wrote them on the output grid;
        checkpoint when one is due."""
        entry = _entry(key, window, tile_crc(arrays), skipped)
        with self._lock:
            self._pending += self._written(window, entry)
            if time.monotonic() - self._last >= self.interval:
                self._checkpoint_locked()

    def checkpoint(self, final: bool = False) -> None:
        """Make every recorded tile durable: flush the stripes, then journal the sealed tiles.

        ``final``: no tile will write into the stripes any more (inference is over), so the
        finished tiles still waiting on a block are journaled too."""
        with self._lock:
            if final:
                waiting = {id(item): item for items in self._waiting.values() for item in items}
                self._pending += [item[0] for item in waiting.values()]
                self._waiting.clear()
            self._checkpoint_locked()

    def _checkpoint_locked(self) -> None:
        self._last = time.monotonic()
        if not self._pending or self._fh is None:
            return
        with critical():  # a Ctrl-C or SIGTERM lands after the checkpoint, not inside it
            for p in self.products:
                if p is not None:
                    p.sync()  # close (GDAL writes cached blocks + tile index), fsync, reopen for update
            lines = "".join(json.dumps(e) + "\n" for e in self._pending)
            with writing("the resume journal", self.out_dir):
                self._fh.write(lines)
                self._fh.flush()
                os.fsync(self._fh.fileno())
            self._pending.clear()

    # ------------------------------------------------------------------ end
    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None

    def discard(self) -> None:
        """Remove the journal and the stripes (a fresh start, or before the commit)."""
        self.close()
        self.started = False
        for p in [self.path, self.path.with_name(self.path.name + ".tmp"), *self.stripes.values()]:
            for q in (p, Path(str(p) + ".aux.xml")):
                try:
                    q.unlink()
                except OSError:  # missing, or a disk gone read-only: the failure at hand is reported
                    pass
