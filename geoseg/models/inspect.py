"""Measuring a model's receptive field and downsampling factor on its own runtime.

Nothing here reads the model's code or weights: the model runs (through any
:class:`~geoseg.models.runtime.Runtime`) on a random probe image, and on copies of it that
differ in one place, and the outputs are compared:

- **downsampling factor**: the smallest shift ``s`` (1, 2, 4, ... 64) for which shifting the
  input shifts the output by the same amount, away from the image's edges (a network that
  pools by 8 is equivariant to shifts by 8, not by 4);
- **receptive field**: a square block of the probe is changed (random values, at each
  position of the block's edges within the factor grid) and the farthest output pixel that
  changes, beyond the block's edges, gives the radius ``r`` of the receptive field;
- **halo** = ``r`` rounded up to the factor: the context tiles need for outputs identical to
  whole-image inference;
- **seams**: ``exact`` when the radius stays below :data:`BLEND_RADIUS`; a model whose
  outputs change all the way to the probe's edge (global pooling, attention) or farther than
  that runs with overlapping tiles blended (``blended``);
- **outputs**: ``probabilities`` when every class output lies in 0..1 and sums to 1 over the
  classes (a softmax in the graph), else ``logits``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from geoseg.errors import ModelError
from geoseg.models.runtime import split_outputs

__all__ = ["Inspection", "inspect_runtime", "BLEND_RADIUS", "PROBE_SIZE"]

#: Receptive-field radius (px) above which tiles are blended instead of cut exactly.
BLEND_RADIUS = 200
#: Side of the probe image for models of any input size (a multiple of 64).
PROBE_SIZE = 512
_FACTORS = (1, 2, 4, 8, 16, 32, 64)
_BLOCK = 19  # side of the changed block (odd: its two edges fall on different phases)


@dataclasses.dataclass(frozen=True)
class Inspection:
    """What :func:`inspect_runtime` measured.

    Attributes:
        radius: Receptive-field radius in px, or None when it reached the probe's edge.
        downsampling: The smallest shift the outputs follow.
        halo: ``radius`` rounded up to ``downsampling`` (for blended seams: 0).
        seams: ``"exact"`` or ``"blended"``.
        outputs: ``"logits"`` or ``"probabilities"``.
        probe: Side of the probe image.
        forwards: Model runs the measurement took.
    """

    radius: int | None
    downsampling: int
    halo: int
    seams: str
    outputs: str
    probe: int
    forwards: int


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
    seed: int = 0,
) -> Inspection:
    """Measure receptive field, downsampling factor and output kind of a runtime.

    Args:
        runtime: Normalised ``(1, bands, H, W)`` float32 torch tensor in, outputs out.
        bands: Input channels.
        input_size: The fixed input size, if the model has one (the probe takes it).
        downsampling: A declared factor (not measured then).
        source: The model, for messages.
        probe: Side of the probe (default :data:`PROBE_SIZE`).
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
    forwards = 0

    def run(x: Any) -> tuple[Any, Any]:
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
    probabilities = bool(classes0.min() >= 0 and classes0.max() <= 1 and (total - 1).abs().max() < 1e-3)
    probabilities = probabilities or (classes0.shape[1] == 1 and bool(classes0.min() >= 0 and classes0.max() <= 1))
    outputs = "probabilities" if probabilities else "logits"

    def reach(offset: int) -> tuple[int, bool]:
        r0, c0 = ph // 2 + offset, pw // 2 + offset
        x = base.clone()
        block = x[..., r0 : r0 + _BLOCK, c0 : c0 + _BLOCK]
        block += 10.0 * torch.randn(block.shape, generator=gen)
        changed = _changed(run(x)[0], out0)
        rows = changed.any(1).nonzero().flatten()
        cols = changed.any(0).nonzero().flatten()
        if len(rows) == 0:
            return 0, False
        edge = bool(rows.min() == 0 or rows.max() == ph - 1 or cols.min() == 0 or cols.max() == pw - 1)
        r1, c1 = r0 + _BLOCK - 1, c0 + _BLOCK - 1
        radius = max(r0 - int(rows.min()), int(rows.max()) - r1, c0 - int(cols.min()), int(cols.max()) - c1, 0)
        return radius, edge

    radius, edge = reach(0)
    factor = downsampling
    if factor is None:
        margin = radius + 8 if not edge else min(ph, pw) // 4
        for s in _FACTORS:
            if 2 * (margin + s) >= min(ph, pw):
                break
            shifted = run(torch.roll(base, (s, s), (2, 3)))[0]
            expected = torch.roll(out0, (s, s), (2, 3))
            cut = (..., slice(margin + s, ph - margin), slice(margin + s, pw - margin))
            if not _changed(shifted[cut], expected[cut]).any():
                factor = s
                break
        if factor is None:
            raise ModelError(
                f"{source}: cannot measure the downsampling factor (the outputs follow no input shift up to 64 px): "
                "declare 'downsampling' in the sidecar MODEL.geoseg.json"
            )
    if not edge:
        for p in range(1, factor):
            r, e = reach(p)
            radius, edge = max(radius, r), edge or e
            if edge:
                break
    if edge or radius > BLEND_RADIUS:
        return Inspection(None if edge else radius, factor, 0, "blended", outputs, ph, forwards)
    halo = int(math.ceil(radius / factor) * factor)
    return Inspection(radius, factor, halo, "exact", outputs, ph, forwards)
