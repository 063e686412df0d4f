"""Global reductions over parameters that may be sharded (FSDP2's DTensors): the SAM step's norms and the
optimizers' whole-tensor statistics.

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) every parameter and gradient is a DTensor: each rank
holds one shard (``Shard(0)`` on the mesh's shard dimension; HSDP adds ``Replicate`` dimensions) of the
gradient already averaged over all ranks. The SAM step then works on the local shards only
(``.to_local()``, views of FSDP's storage, so in-place updates land in the sharded parameter): w is saved
and restored shard by shard, e is added to each shard in place, and the global quantities (‖g‖, ASAM's
‖T g‖, ‖e‖, LookSAM's ⟨g, g_sam⟩, ‖g_v‖) are sums of per-shard contributions made whole by one all-reduce
over the mesh dimensions on which the tensor is sharded. A collective on a DTensor itself would fail
(``c10d.allreduce_.default does not have a sharding strategy``), and DTensor's own reductions would cost
one collective per tensor. The optimizers do the same (:meth:`ShardedReduction.each`): their kernels run on
the local shards, and a statistic over a whole tensor (AdaShift's φ, SET-Adam's cosine and minimum) or over
all parameters (Adai's v̄) is made whole by one all-reduce per statistic and step.

:data:`LOCAL` is the reduction of an unsharded run: the exact code the step used before sharding existed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["LOCAL", "Reduction", "ShardedReduction", "is_sharded", "local", "reduction_for", "state_bytes"]


def _dtensor_class() -> type | None:
    """``torch.distributed.tensor.DTensor`` (public from torch 2.5; checked with torch 2.6-2.13) once that module is
    loaded, else ``None``: a DTensor exists only after its module was imported, so nothing is imported here (it
    costs ~0.1 s, and a torch built without distributed support has none)."""
    module = sys.modules.get("torch.distributed.tensor")
    found = getattr(module, "DTensor", None)
    if found is not None:
        _DTENSOR.append(found)
    return found


_DTENSOR: list[type] = []


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a DTensor (a parameter or gradient under FSDP2)."""
    cls = _DTENSOR[0] if _DTENSOR else _dtensor_class()
    return cls is not None and isinstance(t, cls)


def local(t: Tensor) -> Tensor:
    """This rank's shard of ``t`` as a plain tensor sharing its storage (``t`` itself when not a DTensor)."""
    if not is_sharded(t):
        return t
    with torch.no_grad():  # outside autograd to_local returns the local tensor itself: in-place writes land in t
        return t.to_local()


def _promote(tensors: Sequence[Tensor]) -> torch.dtype:
    return torch.promote_types(tensors[0].dtype, torch.float32)


class Reduction:
    """Norms and dot products over all tensors of one process (no sharding): the unsharded step's arithmetic."""

    sharded = False

    def local(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        return list(tensors)

    def norm(self, tensors: Sequence[Tensor]) -> Tensor:
        """‖·‖ over all tensors, accumulated in at least float32 (0-d tensor on the first tensor's device)."""
        if not tensors:
            return torch.zeros(())
        dtype = _promote(tensors)
        device = tensors[0].device
        norms = torch._foreach_norm(list(tensors), 2, dtype=dtype)
        return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]))

    def dot(self, a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
        dtype = _promote(a)
        return sum((x.to(dtype) * y.to(dtype)).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


LOCAL = Reduction()


class ShardedReduction(Reduction):
    """Reductions over tensors given as this rank's local shards of DTensors laid out like ``params``.

    Each tensor's contribution (its local sum of squares, or of products) is summed over the mesh
    dimensions on which it is sharded (one all-reduce of a float64 buffer per distinct layout, in practice
    one); replicated dimensions are not summed, plain (unsharded) tensors count once.
    """

    sharded = True

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.layouts: list[tuple[int, ...]] = []  # per param: the mesh dims it is sharded on
        self.groups: dict[tuple[int, ...], list[Any]] = {}
        mesh = None
        for p in params:
            if not is_sharded(p):
                self.layouts.append(())
                continue
            if mesh is None:
                mesh = p.device_mesh
            elif p.device_mesh != mesh:
                raise ValueError("SAM under FSDP2: parameters on different device meshes are not supported; "
                                 "allowed: one mesh for all trainable parameters (fully_shard's default)")
            dims = []
            for i, placement in enumerate(p.placements):
                if placement.is_shard():
                    dims.append(i)
                elif not placement.is_replicate():
                    raise ValueError(f"SAM under FSDP2: a parameter with placement {placement} is not supported; "
                                     "allowed: Shard and Replicate placements (FSDP2 and HSDP)")
            key = tuple(dims)
            self.layouts.append(key)
            if key and key not in self.groups:
                self.groups[key] = [mesh.get_group(i) for i in key]
        self.device = torch.device(mesh.device_type) if mesh is not None else torch.device("cpu")
        if self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())

    def local(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        return [local(t) for t in tensors]

    def each(self, values: Sequence[Tensor], op: str = "sum") -> list[Tensor]:
        """Per tensor, its 0-d local ``values`` (aligned with the params) reduced over its shards (``op``: sum,
        max or min; float64, one all-reduce per layout); plain tensors' values are returned as they are."""
        rop = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
        out = [v.to(self.device, torch.float64) for v in values]
        by_layout: dict[tuple[int, ...], list[int]] = {}
        for i, key in enumerate(self.layouts):
            if key:
                by_layout.setdefault(key, []).append(i)
        for key, idx in by_layout.items():
            buf = torch.stack([out[i] for i in idx])
            for group in self.groups[key]:
                dist.all_reduce(buf, op=rop, group=group)
            for j, i in enumerate(idx):
                out[i] = buf[j]
        return out

    def combined(self, values: Sequence[Tensor], what: str) -> list[Tensor]:
        """``values``, each a sum over local shards of all the params (which must share one layout), summed over
        the shards (one all-reduce). ``what`` names the statistic for the error."""
        if len(set(self.layouts)) != 1:
            raise ValueError(f"{what} over sharded and unsharded (or differently sharded) parameters together is not "
                             "supported; allowed: every parameter of the optimizer sharded alike (fully_shard on the "
                             "root module, FSDP2's default), or none")
        buf = torch.stack([v.to(self.device, torch.float64) for v in values])
        for group in self.groups.get(self.layouts[0], ()):
            dist.all_reduce(buf, group=group)
        return [buf[i].to(v.device, v.dtype) for i, v in enumerate(values)]

    def total(self, contributions: Sequence[Tensor]) -> Tensor:
        """Σ over tensors of their 0-d local ``contributions`` (aligned with the params), summed over shards."""
        by_layout: dict[tuple[int, ...], list[Tensor]] = {}
        for key, c in zip(self.layouts, contributions, strict=True):
            by_layout.setdefault(key, []).append(c.to(self.device, torch.float64))
        out = torch.zeros((), dtype=torch.float64, device=self.device)
        for key, cs in by_layout.items():
            s = torch.stack(cs).sum()
            for group in self.groups.get(key, ()):
                dist.all_reduce(s, group=group)
            out = out + s
        return out

    def norm(self, tensors: Sequence[Tensor]) -> Tensor:
        tensors = self.local(tensors)
        if not tensors:
            return torch.zeros(())
        norms = torch._foreach_norm(tensors, 2, dtype=_promote(tensors))
        sq = self.total([n.double().square() for n in norms])
        return sq.sqrt().to(tensors[0].device, _promote(tensors))

    def dot(self, a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
        a, b = self.local(a), self.local(b)
        dtype = _promote(a)
        out = self.total([(x.to(dtype) * y.to(dtype)).sum() for x, y in zip(a, b, strict=True)])
        return out.to(a[0].device, dtype)


def reduction_for(params: Sequence[Tensor]) -> Reduction:
    """:class:`ShardedReduction` when any of ``params`` is a DTensor, else :data:`LOCAL`."""
    return ShardedReduction(params) if any(is_sharded(p) for p in params) else LOCAL


def state_bytes(tensors: Sequence[Tensor] | None) -> int:
    """Bytes this rank holds for ``tensors`` (local shards)."""
    return sum(local(t).numel() * local(t).element_size() for t in tensors or ())
