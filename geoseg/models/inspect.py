"""Measuring a model's receptive field and downsampling factor on its own runtime.

Nothing here reads the model's code or weights: the model runs (through any
:class:`~geoseg.models.runtime.Runtime`) on a random probe image and on copies of it that
differ in chosen places, and the outputs are compared (exactly, to float rounding):

- **downsampling factor**: the smallest shift ``s`` (1, 2, 4, ... 64) for which shifting the
  input shifts the output by the same amount, away from the image's edges (a network that
  pools by 8 is equivariant to shifts by 8, not by 4);
- **context**: for a core of the probe aligned to that factor (as
  :class:`~geoseg.grid.TileGrid` aligns tiles), the smallest ``d`` such that changing every
  input pixel farther than ``d`` px from the core leaves the core's outputs unchanged
  (bisection on ``d``, the same random change each time);
- **halo** = the context rounded up to the factor: the least a tile needs for outputs
  identical to whole-image inference (so a halo one factor step smaller changes them);
- **seams**: ``exact`` when the context stays within :data:`BLEND_RADIUS`; a model whose core
  still moves when only pixels that far away change (global pooling, attention) runs with
  overlapping tiles blended (``blended``);
- **receptive radius** (on request): the farthest output pixel that moves when a small
  block changes, over the block's positions within the factor grid;
- **outputs**: ``probabilities`` when every class output lies in 0..1 and sums to 1 over the
  classes (a softmax in the graph), else ``logits``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from geoseg.errors import ModelError
from geoseg.models.runtime import split_outputs

__all__ = ["Inspection", "inspect_runtime", "seam_error", "BLEND_RADIUS", "PROBE_SIZE"]

#: Context (px) beyond which tiles are blended instead of cut exactly.
BLEND_RADIUS = 192
#: Side of the probe image for models of any input size (a multiple of 64).
PROBE_SIZE = 512
_FACTORS = (1, 2, 4, 8, 16, 32, 64)
#: Larger probes, tried when the outputs in the centre of the first one follow no shift.
_GROWN_PROBES = (1024, 2048)
#: Side of the central window in which shifted outputs are compared.
_WINDOW = 128
_BLOCK = 19  # side of the changed block of the radius probe


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What :func:`inspect_runtime` measured.

    Attributes:
        context: Context in px an aligned core needs, or None when it exceeds the probe's reach.
        downsampling: The smallest shift the outputs follow.
        halo: ``context`` rounded up to ``downsampling`` (for blended seams: 0).
        seams: ``"exact"`` or ``"blended"``.
        outputs: ``"logits"`` or ``"probabilities"``.
        probe: Side of the probe image.
        forwards: Model runs the measurement took.
        radius: Receptive-field radius in px (when asked for; None otherwise or unbounded).
    """

    context: int | None
    downsampling: int
    halo: int
    seams: str
    outputs: str
    probe: int
    forwards: int
    radius: int | None = None


def _run(runtime: Any, x: Any) -> tuple[Any, Any]:
    import torch

    classes, masks = split_outputs(runtime(x))
    joined = classes.float() if masks is None else torch.cat([classes.float(), masks.float()], 1)
    return joined.detach().to("cpu"), classes.detach().float().to("cpu")


def _changed(a: Any, b: Any) -> Any:
    tol = 1e-7 * (1.0 + float(b.abs().max()))
    return ((a - b).abs() > tol).any(dim=1)[0]


def inspect_runtime(
    runtime: Any,
    bands: int,
    *,
    input_size: tuple[int, int] | None = None,
    downsampling: int | None = None,
    source: str = "model",
    probe: int | None = None,
    radius: bool = False,
    seed: int = 0,
) -> Inspection:
    """Measure context, halo, downsampling factor and output kind of a runtime.

    Args:
        runtime: Normalised ``(1, bands, H, W)`` float32 torch tensor in, outputs out.
        bands: Input channels.
        input_size: The fixed input size, if the model has one (the probe takes it).
        downsampling: A declared factor (not measured then).
        source: The model, for messages.
        probe: Side of the probe (default :data:`PROBE_SIZE`).
        radius: Also measure the receptive radius (about ``factor + 1`` more forwards).
        seed: Seed of the probe's random values.

    Raises:
        ModelError: If the model fails on the probe or no factor up to 64 fits.
    """
    import torch

    if input_size is not None:
        ph, pw = input_size
    else:
        ph = pw = probe or PROBE_SIZE
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, bands, ph, pw, generator=gen)
    noise = 10.0 * torch.randn(base.shape, generator=gen)
    forwards = 0

    def run(x: Any) -> Any:
        nonlocal forwards
        forwards += 1
        try:
            return _run(runtime, x)
        except ModelError:
            raise
        except Exception as err:
            text = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ModelError(f"{source}: the model fails on a {ph}x{pw} probe with {bands} bands ({text[:160]})") from None

    out0, classes0 = run(base)
    if out0.shape[-2:] != base.shape[-2:]:
        raise ModelError(
            f"{source}: the model maps a {ph}x{pw} input to {tuple(out0.shape[-2:])} outputs; geoseg runs models "
            "whose outputs have the input's height and width"
        )
    total = classes0.sum(dim=1)
    in_unit = bool(classes0.min() >= 0 and classes0.max() <= 1)
    probabilities = in_unit and (classes0.shape[1] == 1 or bool((total - 1).abs().max() < 1e-3))
    outputs = "probabilities" if probabilities else "logits"

    factor = downsampling
    if factor is None:
        factor = _shift_factor(run, base, out0, _FACTORS)
    if factor is None and input_size is None:
        # the outputs near the centre still see the probe's borders (a receptive field wider than
        # the probe: ResNet encoders): larger probes, starting from the input-size step the model accepts
        low = _size_step(runtime, bands)
        candidates = tuple(s for s in _FACTORS if s >= low)
        for side in _GROWN_PROBES:
            if side <= ph:
                continue
            ph = pw = side
            base = torch.randn(1, bands, ph, pw, generator=gen)
            noise = 10.0 * torch.randn(base.shape, generator=gen)
            out0, _ = run(base)
            factor = _shift_factor(run, base, out0, candidates, top_first=True)
            if factor is not None:
                break
    if factor is None:
        raise ModelError(
            f"{source}: cannot measure the downsampling factor (the outputs follow no input shift up to 64 px "
            f"on probes up to {ph} px): declare 'downsampling' in the sidecar MODEL.geoseg.json"
        )

    # an aligned core in the middle, and the largest context the probe can test around it
    side = max(factor, min(64, min(ph, pw) // 4) // factor * factor)
    r0, c0 = (ph - side) // 2 // factor * factor, (pw - side) // 2 // factor * factor
    reach = min(r0, c0, ph - r0 - side, pw - c0 - side, BLEND_RADIUS)
    core = (..., slice(r0, r0 + side), slice(c0, c0 + side))

    def moves(d: int) -> bool:
        x = base + noise
        box = (..., slice(max(0, r0 - d), r0 + side + d), slice(max(0, c0 - d), c0 + side + d))
        x[box] = base[box]
        return bool(_changed(run(x)[0][core], out0[core]).any())

    if moves(reach):
        return Inspection(None, factor, 0, "blended", outputs, ph, forwards)
    lo, hi = -1, reach  # moves(lo) (or lo < 0), not moves(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if moves(mid):
            lo = mid
        else:
            hi = mid
    context = hi
    halo = int(math.ceil(context / factor) * factor)
    rad = _radius(run, base, out0, factor, ph, pw, gen) if radius else None
    return Inspection(context, factor, halo, "exact", outputs, ph, forwards, rad)


def _shift_factor(run: Any, base: Any, out0: Any, shifts: tuple[int, ...], top_first: bool = False) -> int | None:
    """The smallest of ``shifts`` that the outputs follow, compared in a central window.

    The input is rolled by ``(s, s)`` and the outputs must equal the rolled outputs in a
    window of :data:`_WINDOW` px (a quarter of a small probe) as far as it can be from the
    probe's borders and from the seam the roll brings in (what a receptive field wider than
    the probe sees first). With ``top_first`` the largest
    shift is tried first: when the outputs do not follow even it (every factor up to 64
    divides it), the probe is too small for the model's receptive field and no smaller one
    is tried.
    """
    import torch

    ph, pw = base.shape[-2:]
    n = min(_WINDOW, min(ph, pw) // 4)

    def follows(s: int) -> bool:
        # rolled by s, output row r holds content row r - s: its distances to the borders (0, ph) and
        # to the rolled-in seam (s) are largest in the n rows centred on (ph + s) / 2
        mr, mc = (ph - s - n) // 2, (pw - s - n) // 2
        if min(mr, mc) < n // 2:
            return False
        cut = (..., slice(mr + s, mr + s + n), slice(mc + s, mc + s + n))
        shifted = run(torch.roll(base, (s, s), (2, 3)))[0]
        return not _changed(shifted[cut], torch.roll(out0, (s, s), (2, 3))[cut]).any()

    if top_first and not follows(shifts[-1]):
        return None
    for s in shifts[:-1] if top_first else shifts:
        if follows(s):
            return s
    return shifts[-1] if top_first else None


def _size_step(runtime: Any, bands: int) -> int:
    """The smallest step (1, 2, 4 ... 64) by which the model accepts input sizes beyond 64 px.

    A U-Net whose skip connections are concatenated only runs on multiples of its factor: a
    lower bound of the factor, measured on tiny inputs. 1 when any size runs.
    """
    import torch

    for s in _FACTORS:
        try:
            runtime(torch.zeros(1, bands, 64 + s, 64 + s))
        except Exception:  # noqa: BLE001 - a rejected size, whatever the runtime raises
            continue
        return s
    return 1


def _radius(run: Any, base: Any, out0: Any, factor: int, ph: int, pw: int, gen: Any) -> int | None:
    """Receptive radius: farthest output change from a changed block, over the factor grid's phases."""
    import torch

    best = 0
    for p in range(factor):
        r0, c0 = ph // 2 + p, pw // 2 + p
        x = base.clone()
        block = x[..., r0 : r0 + _BLOCK, c0 : c0 + _BLOCK]
        block += 10.0 * torch.randn(block.shape, generator=gen)
        changed = _changed(run(x)[0], out0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        if len(rows) == 0:
            continue
        if rows.min() == 0 or rows.max() == ph - 1 or cols.min() == 0 or cols.max() == pw - 1:
            return None
        r1, c1 = r0 + _BLOCK - 1, c0 + _BLOCK - 1
        best = max(best, r0 - int(rows.min()), int(rows.max()) - r1, c0 - int(cols.min()), int(cols.max()) - c1)
    return best


def seam_error(runtime: Any, bands: int, halo: int, factor: int, *, size: int = 256, tile: int = 64, seed: int = 1) -> float:
    """Largest output difference between whole-image inference and tiles with this halo.

    A ``size x size`` random probe runs whole, then cut into ``tile``-px cores (multiples of
    ``factor``), each run on its core plus ``halo`` px of context (clamped to the probe, as
    :class:`~geoseg.grid.TileGrid` cuts scenes); 0 (to float rounding) means exact seams.
    For models of any input size.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, bands, size, size, generator=gen)
    whole = _run(runtime, x)[0]
    worst = 0.0
    for r in range(0, size, tile):
        for c in range(0, size, tile):
            r0, c0 = max(0, r - halo), max(0, c - halo)
            r1, c1 = min(size, r + tile + halo), min(size, c + tile + halo)
            win = x[..., r0:r1, c0:c1]
            ph, pw = (-win.shape[-2]) % factor, (-win.shape[-1]) % factor
            if ph or pw:
                win = torch.nn.functional.pad(win, (0, pw, 0, ph))
            out = _run(runtime, win)[0][..., r - r0 : r - r0 + tile, c - c0 : c - c0 + tile]
            ref = whole[..., r : r + tile, c : c + tile]
            worst = max(worst, float((out - ref).abs().max()))
    return worst
