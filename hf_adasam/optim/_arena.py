"""Arena dispatch: one compiled call runs a kernel over all of a bucket's tensors, whatever their number.

A kernel's tensors live wherever the model and autograd put them: hundreds of separate allocations (LoRA:
448 adapter tensors at 7B shapes). Calling a compiled graph per tensor, or per few tensors, costs ~180 µs of
dynamo/AOT wrappers a call on a CPU and a kernel launch a call on a GPU. Here instead each list of tensors (the
params, the grads, each state buffer) is seen by the compiled graph as one *arena*: a tensor over the memory from
the list's lowest to its highest address, with one offset per tensor (its distance from the arena's start, in
elements). The graph cuts every tensor into rows of ``C`` elements plus a tail of ``numel % C`` single elements,
gathers the rows by offset (each row contiguous, so the loop stays vectorised), runs the kernel's element-wise
math on the gathered blocks and writes the results back to the same rows. So:

- one call per kernel per step for any number of tensors, and the generated code does not grow with them
  (the sizes are symbolic: one compilation serves every model);
- the memory traffic is the kernel's own: rows are read and written in place, plus an offset per row (8 bytes
  per ``C`` elements);
- nothing about the tensors changes: the state keeps one tensor per parameter (``state_dict`` as before), and
  parameters and gradients stay where they are.

An arena is read through one tensor and written through another over the same memory, so that inductor fuses
each row's reads, math and writes into one loop (through a single tensor it cannot prove that a gathered row and
a scattered row are the same elements, and materialises every result first: 1.8x the time). That is safe under
one rule, which every graph built here follows: a graph either only reads arenas (reductions), or is element-wise,
each element written only by the loop iteration that read it; per-tensor scalars it writes come from graph inputs,
never from values the graph read from their own arena. The differential net (tests/test_kernel_net.py) checks
every kernel, dtype and knob against the float64 single-tensor path.

Inductor chooses which results share a loop from the sizes of the call that compiles the graph, so every graph is
compiled on a synthetic bucket of a large bucket's proportions (``hf_adasam.optim._base``), and is told that the
rows and tail elements are as many as a large bucket's (:data:`ROWS_HINT`, :data:`TAIL_HINT`) whatever the call.
Compiled on a bucket of tensors under 16 elements (no rows), the element-wise math split into a loop per result,
each result a model-sized buffer per step (and inductor's disk cache served that code to later processes).

The memory view of an arena needs a private torch function (``torch._C._construct_storage_from_data_pointer``,
which inductor's CUDA graphs use for the same purpose), reached through :func:`._compile.storage_at`; without it
the compiled impl is off and the foreach kernels run, with a warning saying why (:mod:`._compile`).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ._compile import assume_equal, hint_size, storage_at

# how a list of tensors maps onto the parameters
ELEM = "elem"  # one tensor per parameter, of the parameter's size (params, grads, state buffers)
SCALAR = "scalar"  # one one-element tensor per parameter (per-tensor state: AdaShift's v, RAdam's step)

ROW_CHOICES = (1024, 512, 256, 128, 64, 32, 16)  # candidate row lengths C, largest first
# what every compilation takes a bucket's numbers of rows and of tail elements to be, whatever the call's (those of a
# large bucket; :func:`._compile.hint_size`)
ROWS_HINT, TAIL_HINT = 4096, 64


class PerTensor:
    """A hyperparameter with one value per parameter, held as one ``[N]`` tensor.

    The single-tensor and foreach kernels get it as a list of 0-d tensors (:meth:`values_list`); the arena
    gathers it per row, so the kernel sees a ``[rows, 1]`` block (and ``[tail]`` for the tail elements)."""

    __slots__ = ("values",)

    def __init__(self, values: Tensor) -> None:
        self.values = values

    def values_list(self) -> list[Tensor]:
        return list(self.values.unbind())


def _view(ptr: int, span: int, cols: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A ``(span, cols)`` tensor over the memory at ``ptr``, row ``i`` starting at element ``i`` (strides 1, 1).

    A new storage object each time: two views of the same memory are, to the compiler, two unrelated inputs."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    storage = storage_at(ptr, device, (span + cols - 1) * itemsize)
    return torch.empty(0, dtype=dtype, device=device).set_(storage, 0, (span, cols), (1, 1))


# ----------------------------------------------------------------------------------------------
# layouts: rows and tail of a bucket
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """How the bucket's ``numels`` are cut: rows of ``C`` elements (tensor id, start in the tensor) and tail
    elements (tensor id, position in the tensor), as int64 tensors on the device."""

    C: int
    tid_rows: Tensor
    start_rows: Tensor
    tid_tail: Tensor
    pos_tail: Tensor

    @property
    def rows(self) -> int:
        return self.tid_rows.numel()


def row_length(numels: Sequence[int]) -> int:
    """The largest candidate row length whose tails (``numel % C`` of each tensor) hold at most 1/64 of the
    elements; the smallest candidate if none does (then most elements are tails: small tensors)."""
    total = sum(numels)
    for c in ROW_CHOICES:
        if 64 * sum(n % c for n in numels) <= total:
            return c
    return ROW_CHOICES[-1]


_LAYOUTS: dict[tuple[Any, ...], Layout] = {}


def layout(numels: tuple[int, ...], device: torch.device) -> Layout:
    key = (device, numels)
    found = _LAYOUTS.get(key)
    if found is None:
        if len(_LAYOUTS) > 64:  # a process that builds many optimizers: keep the recent ones
            _LAYOUTS.pop(next(iter(_LAYOUTS)))
        c = row_length(numels)
        n = torch.tensor(numels, dtype=torch.int64)
        ids = torch.arange(len(numels))
        full, tail = n // c, n % c
        tid_rows = ids.repeat_interleave(full)
        first_row = (full.cumsum(0) - full).repeat_interleave(full)
        start_rows = (torch.arange(tid_rows.numel()) - first_row) * c
        tid_tail = ids.repeat_interleave(tail)
        first_tail = (tail.cumsum(0) - tail).repeat_interleave(tail)
        pos_tail = full[tid_tail] * c + torch.arange(tid_tail.numel()) - first_tail
        tid_rows, start_rows, tid_tail, pos_tail = (t.to(device) for t in (tid_rows, start_rows, tid_tail, pos_tail))
        found = _LAYOUTS[key] = Layout(c, hint_size(tid_rows, ROWS_HINT), hint_size(start_rows, ROWS_HINT),
                                       hint_size(tid_tail, TAIL_HINT), hint_size(pos_tail, TAIL_HINT))
    return found


# ----------------------------------------------------------------------------------------------
# arenas: the lists as the graph sees them
# ----------------------------------------------------------------------------------------------
class NotArena(Exception):
    """These lists cannot be seen as arenas (say why); the caller runs the foreach kernel on them."""


@dataclass
class Arenas:
    """The graph's inputs for ``lists``: a read view and (for written lists) a write view per list, and the
    offsets of every tensor (``[lists, N]`` int64)."""

    reads: list[Tensor]
    writes: list[Tensor | None]
    offsets: Tensor


def arenas(lists: Sequence[Sequence[Tensor]], written: Sequence[bool], cols: int, device: torch.device) -> Arenas:
    """Views over ``lists`` (each of ``N`` contiguous tensors on ``device``; the caller checked contiguity).

    Raises :class:`NotArena` if a list mixes dtypes, a tensor is not aligned to its element size, or two tensors
    of a written list overlap (an in-place update of shared memory is sequential in foreach, a race here). The
    per-tensor work is a pointer read each; the offsets are computed in one small tensor op for all lists."""
    ptrs = [list(map(Tensor.data_ptr, ts)) for ts in lists]
    dtypes = [ts[0].dtype for ts in lists]
    if any(len({t.dtype for t in ts}) > 1 for ts in lists):
        raise NotArena("a list of tensors of several dtypes")
    itemsize = torch.tensor([ts[0].element_size() for ts in lists], dtype=torch.int64)
    numels = torch.tensor([list(map(Tensor.numel, ts)) for ts in lists], dtype=torch.int64)
    at = torch.tensor(ptrs, dtype=torch.int64)
    base = at.amin(1, keepdim=True)
    rel = at - base
    if bool((rel % itemsize[:, None]).any()):
        raise NotArena("a tensor not aligned to its element size")
    offs = rel // itemsize[:, None]
    # at least `cols` rows: torch 2.7-2.8 guard a graph on cols <= span, so a bucket of one tensor smaller than a
    # row would compile it again (the rows past the last tensor's end are never read: rows are gathered by offset)
    spans = (offs + numels).amax(1).clamp(min=cols).tolist()
    reads, writes = [], []
    for i, (dtype, write) in enumerate(zip(dtypes, written, strict=True)):
        if write and len(lists[i]) > 1 and not _disjoint(ptrs[i], numels[i] * itemsize[i]):
            raise NotArena("two parameters whose tensors overlap in memory")
        start = ptrs[i][0] - int(rel[i, 0])
        reads.append(_view(start, spans[i], cols, dtype, device))
        writes.append(_view(start, spans[i], cols, dtype, device) if write else None)
    return Arenas(reads, writes, offs.to(device, non_blocking=True) if device.type != "cpu" else offs)


_DISJOINT: dict[tuple[int, ...], tuple[list[int], bool]] = {}


def _disjoint(ptrs: list[int], nbytes: Tensor) -> bool:
    """Whether no two of the memory ranges ``[ptr, ptr + nbytes)`` overlap; remembered for recent pointer sets
    (parameters and state keep their memory from step to step)."""
    key = tuple(ptrs)
    found = _DISJOINT.get(key)
    if found is None or found[0] != nbytes.tolist():
        if len(_DISJOINT) > 256:
            _DISJOINT.pop(next(iter(_DISJOINT)))
        sizes = nbytes.tolist()
        order = sorted(range(len(ptrs)), key=ptrs.__getitem__)
        found = _DISJOINT[key] = (sizes, all(ptrs[i] + sizes[i] <= ptrs[j] for i, j in itertools.pairwise(order)))
    return found[1]


# ----------------------------------------------------------------------------------------------
# the graph
# ----------------------------------------------------------------------------------------------
# ``lay`` in a graph: the layout's four tensors (tid_rows, start_rows, tid_tail, pos_tail)
Lay = tuple[Tensor, Tensor, Tensor, Tensor]


def row_index(offsets: Tensor, kinds: Sequence[str], lay: Layout) -> tuple[list[Tensor], list[Tensor]]:
    """Per list, its offset of each row (``[R]``) and of each tail element (``[T]``) in its arena; a per-tensor
    scalar list's rows and tail elements all point at the tensor's one element.

    Computed before the graph (a few small ops): inside it, the offsets would be recomputed from the tensor ids
    in every vector iteration of the loop (the compiler cannot hoist loads past the loop's stores). One 1-D tensor
    per list: slicing a 2-D one inside the graph makes dynamo guard on its sizes (a bucket without tail elements
    would compile the graph again)."""
    elem = torch.tensor([k == ELEM for k in kinds], dtype=torch.int64, device=offsets.device)
    rows = (offsets[:, lay.tid_rows] + elem[:, None] * lay.start_rows).unbind()
    tail = (offsets[:, lay.tid_tail] + elem[:, None] * lay.pos_tail).unbind()
    return [hint_size(r.clone(), ROWS_HINT) for r in rows], [hint_size(t.clone(), TAIL_HINT) for t in tail]


_PREPARED: dict[tuple[Any, ...], tuple[Arenas, list[Tensor], list[Tensor], int]] = {}
PREPARED_BYTES = 256 << 20  # the most index memory remembered (a full 7B model's one bucket would not fit: recomputed)


def prepared(lists: Sequence[Sequence[Tensor]], written: Sequence[bool], kinds: Sequence[str], numels: Sequence[int],
             lay: Layout, device: torch.device) -> tuple[Arenas, list[Tensor], list[Tensor]]:
    """:func:`arenas` and :func:`row_index` of ``lists``, remembered for recent pointer sets: parameters, gradients
    and state keep their memory from step to step (AdaShift's window cycles through ``n`` sets), and recomputing
    the row offsets every step costs as much as a quarter of the kernel (8.7 ms at 22.7M parameters, one thread).
    The key is everything the views and offsets depend on: each tensor's address, the lists' dtypes, the sizes."""
    key = (device, tuple(numels), tuple(kinds), tuple(written), tuple(ts[0].dtype for ts in lists),
           tuple(tuple(map(Tensor.data_ptr, ts)) for ts in lists))
    found = _PREPARED.pop(key, None)
    if found is None:
        ar = arenas(lists, written, lay.C, device)
        rows_at, tail_at = row_index(ar.offsets, kinds, lay)
        nbytes = sum(t.numel() * t.element_size() for t in (*rows_at, *tail_at))
        if nbytes > PREPARED_BYTES:  # too large to remember: the recent ones stay
            return ar, rows_at, tail_at
        found = (ar, rows_at, tail_at, nbytes)
        total = sum(f[3] for f in _PREPARED.values())
        while _PREPARED and total + nbytes > PREPARED_BYTES:  # forget the least recently used
            total -= _PREPARED.pop(next(iter(_PREPARED)))[3]
    _PREPARED[key] = found  # (re)inserted last: the most recently used
    return found[0], found[1], found[2]


def gather(arena: Tensor, kind: str, rows_at: Tensor, tail_at: Tensor) -> tuple[Tensor, Tensor]:
    """A list's rows block ``[R, C]`` and tail block ``[T]`` (a per-tensor scalar list: ``[R, 1]`` and ``[T]``)."""
    if kind == ELEM:
        return arena[rows_at], arena[tail_at, 0]
    return arena[rows_at, :1], arena[tail_at, 0]


def scatter(arena: Tensor, rows_at: Tensor, tail_at: Tensor, rows: Tensor, tail: Tensor) -> None:
    """Write a list's rows and tail blocks back (``arena``: the list's write view)."""
    arena.index_put_((rows_at,), rows)
    arena.index_put_((tail_at, torch.zeros_like(tail_at)), tail)


def same_rows(*views: Tensor | None) -> None:
    """Tell the compiler that every arena view has rows of the same length ``C`` (it cannot know: each input has
    its own size symbol). With one symbol, every list's rows are one loop, so each element is read, computed and
    written by one iteration; with several, inductor makes a loop per list (slower, and the written values would
    no longer be computed before the loop that writes them over)."""
    views = [v for v in views if v is not None]
    for v in views[1:]:
        assume_equal(v.shape[1], views[0].shape[1])


def per_tensor(values: Tensor, lay: Lay) -> tuple[Tensor, Tensor]:
    """An ``[N]`` per-tensor vector as rows ``[R, 1]`` and tail ``[T]`` blocks."""
    return values[lay[0]].unsqueeze(1), values[lay[2]]


@functools.cache
def elementwise_graph(single: Callable[..., None], kinds: tuple[str, ...], names: tuple[str | None, ...],
                      written: tuple[bool, ...]) -> Callable[..., None]:
    """The graph of an element-wise kernel: gather every list's blocks, run ``single`` on the two blocks (rows,
    tail) as if they were two tensors, scatter the written lists back, then store per-tensor values.

    ``names``: per list, ``None`` for a positional list or the hyperparameter it is passed as. Stores: per-tensor
    scalar lists (write views and offsets) set from ``[N]`` inputs; the kernel never reads them."""

    def graph(reads: list[Tensor], writes: list[Tensor | None], rows_at: list[Tensor], tail_at: list[Tensor], lay: Lay,
              shared: list[list[Tensor]], vectors: dict[str, Tensor], scalars: dict[str, Any], store_to: list[Tensor],
              store_offsets: Tensor, store_values: list[Tensor]) -> None:
        same_rows(*reads, *writes)
        blocks = [list(gather(a, k, rows_at[i], tail_at[i])) for i, (a, k) in enumerate(zip(reads, kinds, strict=True))]
        positional = [b for b, n in zip(blocks, names, strict=True) if n is None]
        hyperparams = {**scalars, **{n: b for b, n in zip(blocks, names, strict=True) if n is not None},
                       **{k: list(per_tensor(v, lay)) for k, v in vectors.items()}}
        single(*positional, *shared, **hyperparams)
        for i, w in enumerate(writes):
            if w is not None and written[i]:
                scatter(w, rows_at[i], tail_at[i], *blocks[i])
        for i, (w, v) in enumerate(zip(store_to, store_values, strict=True)):
            at = store_offsets[i]
            w.index_put_((at, torch.zeros_like(at)), v.to(w.dtype))

    graph.__name__ = graph.__qualname__ = f"arena_{single.__name__}"
    return graph


@functools.cache
def reduction_graph(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The graph of a per-tensor reduction ``fn(blocks, lay, numels, **scalars) -> [N] tensors``: it only reads
    (``blocks``: per element list, its rows and tail blocks; per per-tensor scalar list, its ``[N]`` values;
    ``numels``: the tensors' sizes as an ``[N]`` int64 tensor)."""

    def graph(reads: list[Tensor], kinds: tuple[str, ...], offsets: Tensor, rows_at: list[Tensor],
              tail_at: list[Tensor], lay: Lay, numels: Tensor, scalars: dict[str, Any]) -> Any:
        same_rows(*reads)
        blocks = [gather(a, k, rows_at[i], tail_at[i]) if k == ELEM else a[offsets[i], 0]
                  for i, (a, k) in enumerate(zip(reads, kinds, strict=True))]
        return fn(blocks, lay, numels, **scalars)

    graph.__name__ = graph.__qualname__ = f"arena_{fn.__name__}"
    return graph


def segment_sum(rows: Tensor, tail: Tensor, lay: Lay, n: Tensor) -> Tensor:
    """Per tensor, the sum of its elements (given as rows and tail blocks): each row summed first (in its dtype: a
    row is at most 1024 elements), the rows and tail elements in float64."""
    out = torch.zeros(n.shape[0], dtype=torch.float64, device=rows.device)
    out = out.index_add(0, lay[0], rows.sum(1).to(torch.float64))
    return out.index_add(0, lay[2], tail.to(torch.float64))


def segment_amin(rows: Tensor, tail: Tensor, lay: Lay, n: Tensor) -> Tensor:
    """Per tensor, the minimum of its elements (``+inf`` for a tensor without any)."""
    out = torch.full((n.shape[0],), float("inf"), dtype=rows.dtype, device=rows.device)
    out = out.scatter_reduce(0, lay[0], rows.amin(1), "amin")
    return out.scatter_reduce(0, lay[2], tail, "amin")


def segment_amax(rows: Tensor, tail: Tensor, lay: Lay, n: Tensor) -> Tensor:
    """Per tensor, the maximum of its elements (``-inf`` for a tensor without any)."""
    out = torch.full((n.shape[0],), float("-inf"), dtype=rows.dtype, device=rows.device)
    out = out.scatter_reduce(0, lay[0], rows.amax(1), "amax")
    return out.scatter_reduce(0, lay[2], tail, "amax")
