"""Every use of torch's private internals in hf-adasam, in one module.

The compiled kernels, the arena dispatch (:mod:`._arena`) and :class:`~hf_adasam.optim.RAdam` (which runs
``torch.optim.RAdam``'s own kernels) need a few of torch's private functions and settings. Each is used here and
only here, with the torch versions it was checked on (:data:`CHECKED`) and what happens when a torch release moves
it:

- ``torch._dynamo.config.recompile_limit``: room for a process's graphs, patched around our own calls only;
- ``torch._dynamo.exc`` (``TorchDynamoException``, ``FailOnRecompileLimitHit``): which errors mean "could not
  compile" (that kernel then runs its foreach twin);
- ``torch.fx.experimental._config`` (``use_duck_shape``, ``backed_size_oblivious``): one graph for every bucket
  size;
- ``torch._inductor.config`` (``cpp.vec_isa_ok``, ``cpp.enable_loop_tail_vec``, ``emulate_precision_casts``;
  ``cpp.simdlen`` on torch 2.7-2.8) and ``torch._inductor.cpu_vec_isa``: skip the ISA probe, fewer loops to
  compile, RAdam's float16 rounding (:func:`kernel_inductor_options`: torch 2.7-2.8's
  ``torch._inductor.codegen.cpp.CppVecOverrides`` needs a workaround for it);
- ``torch._inductor.cpp_builder.get_cpp_compiler``: whether a C++ compiler is there (CPU);
- ``torch._C._construct_storage_from_data_pointer``: the arena views (:mod:`._arena`);
- ``torch._check`` (inside a graph), ``Tensor._version``, ``Tensor._base``: every arena's rows have one length;
  which lists a kernel writes; whether a tensor is a view;
- ``torch.compiler.set_stance("fail_on_recompile")`` (public) and the ``RuntimeError`` it raises: a kernel's graph
  is compiled on a synthetic bucket, never on a call's own sizes (:func:`compiled_code_only`);
- ``torch._dynamo.mark_dynamic(..., hint_override=...)`` (torch 2.13; not in 2.7-2.8, where it is skipped): the
  sizes a compilation assumes for a bucket's rows and tail elements (:func:`hint_size`);
- ``torch.optim.radam._single_tensor_radam`` / ``_multi_tensor_radam``, ``RAdam._init_group``,
  ``Optimizer._accelerator_graph_capture_health_check`` (torch 2.7-2.8: ``_cuda_graph_capture_health_check``):
  RAdam's kernels, state creation and CUDA-graph check, exactly torch's.

When one of the compiled impl's uses is missing, the compiled impl is off for the process and every kernel runs its
foreach twin (the same update), with one warning naming what is missing, this torch and the versions checked;
when one of RAdam's is, :class:`~hf_adasam.optim.RAdam` runs ``torch.optim.RAdam.step`` itself, with a warning.

The rules:

- Nothing private is looked up at import: ``import torch._dynamo`` alone costs about 0.9 s. Each use looks its
  object up when first needed (the first compiled step, the first RAdam step).
- Process-wide settings are patched around each call of hf-adasam's own compiled kernels and restored after it
  (:func:`compile_settings`), so a user's own ``torch.compile`` sees torch's defaults (dynamo's recompile limit
  of 8 included).
- A missing use warns and falls back, as above; it never fails a step.

``torch._foreach_*`` ops (what ``torch.optim``'s foreach implementations are built on) are used by every kernel
module directly: they are torch's multi-tensor op surface, not internals of a subsystem.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor

from .._logging import HfAdasamWarning

# the oldest torch hf-adasam runs on (pyproject.toml declares the same floor; tests/test_compat.py keeps them equal)
# (torch 2.6.0 fails: its lerp_ refuses the 0-d float64 weight our compiled kernels pass, and sizes 0 and 1 always
# specialise, so a bucket compiles up to 4 graphs per kernel; docs/compat.md)
TORCH_FLOOR = (2, 7, 1)
# the torch releases on which every use below was checked (the kernel net, dispatch, RAdam, SAM and trainer tests)
CHECKED = ("2.7.1", "2.8.0", "2.13.0")
# the graphs one process may compile per kernel (dtypes x devices x knobs); dynamo's default is 8
RECOMPILE_LIMIT = 64
# dynamo's recompile limit (torch 2.6 called it cache_size_limit; 2.7 to 2.13 keep that name as an alias)
RECOMPILE_LIMIT_NAMES = ("recompile_limit",)


def torch_version() -> tuple[int, int, int]:
    """The installed torch's (major, minor, patch) (a pre-release or local build counts as its release)."""
    return version_of(torch.__version__)


def version_of(version: str) -> tuple[int, int, int]:
    found = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return (int(found[1]), int(found[2]), int(found[3] or 0)) if found else (0, 0, 0)


def require_torch_floor() -> None:
    """One line, at ``import hf_adasam``, on a torch older than :data:`TORCH_FLOOR`."""
    if torch_version() < TORCH_FLOOR:
        floor = ".".join(map(str, TORCH_FLOOR))
        raise ImportError(f"hf-adasam needs torch>={floor}; this is torch {torch.__version__} "
                          f"(pip install 'torch>={floor}')")


def _checked() -> str:
    return f"checked with torch {', '.join(CHECKED)}"


def _torch_moved(what: str, consequence: str) -> str:
    return f"torch {torch.__version__} has no {what} ({_checked()}); {consequence}"


_SAID: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        warnings.warn(message, HfAdasamWarning, stacklevel=4)


# ----------------------------------------------------------------------------------------------
# can the compiled impl run here
# ----------------------------------------------------------------------------------------------
class _Settings:
    """The private objects the compiled impl uses, looked up once (:func:`_settings`)."""

    def __init__(self) -> None:
        import torch._dynamo
        import torch.fx.experimental._config as fx_config
        from torch._inductor import config as inductor_config
        from torch._inductor import cpu_vec_isa

        self.dynamo_config = torch._dynamo.config
        self.fx_config = fx_config
        self.inductor_config = inductor_config
        self.cpu_vec_isa = cpu_vec_isa
        self.recompile_limit = next((n for n in RECOMPILE_LIMIT_NAMES if hasattr(self.dynamo_config, n)), None)
        exc = torch._dynamo.exc
        errors = [getattr(exc, n, None) for n in ("TorchDynamoException", "FailOnRecompileLimitHit")]
        self.errors: tuple[type[BaseException], ...] = tuple(e for e in errors if isinstance(e, type))
        self.missing: list[str] = []
        if self.recompile_limit is None:
            self.missing.append(f"torch._dynamo.config.{RECOMPILE_LIMIT_NAMES[0]}")
        if len(self.errors) < len(errors):
            self.missing.append("torch._dynamo.exc.TorchDynamoException / FailOnRecompileLimitHit")
        self.shapes = {"use_duck_shape": False, "backed_size_oblivious": True}
        self.missing += [f"torch.fx.experimental._config.{n}" for n in self.shapes if not hasattr(fx_config, n)]
        self.inductor_keys = set(inductor_config.get_config_copy()) if hasattr(inductor_config, "get_config_copy") \
            else set()
        for key in ("cpp.vec_isa_ok", *INDUCTOR_OPTIONS, *KERNEL_INDUCTOR_OPTIONS):
            if key not in self.inductor_keys:
                self.missing.append(f"torch._inductor.config.{key}")
        probe = getattr(cpu_vec_isa, "valid_vec_isa_list", None)
        if not (hasattr(probe, "cache_info") and hasattr(probe, "cache_clear")):
            self.missing.append("torch._inductor.cpu_vec_isa.valid_vec_isa_list (a functools cache)")
        if not hasattr(torch._C, "_construct_storage_from_data_pointer"):
            self.missing.append("torch._C._construct_storage_from_data_pointer")
        if not callable(getattr(torch, "_check", None)):
            self.missing.append("torch._check")
        if not callable(getattr(torch.compiler, "set_stance", None)):
            self.missing.append("torch.compiler.set_stance")
        self.missing += [f"Tensor.{n}" for n in ("_version", "_base") if not hasattr(Tensor, n)]


@functools.cache
def _settings() -> _Settings:
    return _Settings()


@functools.cache
def compile_unavailable() -> str | None:
    """``None`` where the compiled impl can run; else why not (the callers warn and run the foreach kernels).

    No ``torch.compile``, ``TORCHDYNAMO_DISABLE=1``, no C++ compiler on a machine without CUDA, or a private
    object this module needs that the installed torch lacks. Looked up at the first compiled step, not at import.
    """
    import os

    if not hasattr(torch, "compile") or os.environ.get("TORCHDYNAMO_DISABLE") == "1":
        return "torch.compile is not usable here (TORCHDYNAMO_DISABLE=1, or a torch without it)"
    try:
        missing = _settings().missing
    except (ImportError, AttributeError) as err:
        return _torch_moved(f"{getattr(err, 'name', None) or err}", "the compiled impl is off")
    if missing:
        return _torch_moved(", ".join(missing), "the compiled impl is off")
    if not torch.cuda.is_available():
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:
            return _torch_moved("torch._inductor.cpp_builder.get_cpp_compiler", "the compiled impl is off")
        try:
            get_cpp_compiler()
        except Exception as err:
            return f"torch.compile cannot build C++ here (no C++ compiler: {type(err).__name__}: {err})"
    if torch_version()[:2] not in {version_of(v)[:2] for v in CHECKED}:
        _say_once(f"the compiled kernels use torch internals {_checked()}; this is torch {torch.__version__}. "
                  "hf-adasam's differential net (tests/test_kernel_net.py) says whether they still hold; "
                  "HF_ADASAM_IMPL=foreach runs without them.")
    return None


def compile_errors() -> tuple[type[BaseException], ...]:
    """What dynamo and inductor raise before a graph runs (a graph they cannot trace, a backend failure, the
    recompile limit): the kernel then runs its foreach twin. Used in ``except`` clauses, so evaluated only when
    an exception is raised."""
    return _settings().errors


# ----------------------------------------------------------------------------------------------
# compiling, and the settings around every call of a compiled kernel
# ----------------------------------------------------------------------------------------------
# inductor settings of every kernel's compilation: a vectorised tail loop (the last < 16 elements of a row) is more
# C++ to compile per loop (~0.8 s of a cold first step), for a handful of elements
INDUCTOR_OPTIONS: dict[str, Any] = {"cpp.enable_loop_tail_vec": False}
# settings single kernels ask for (``run_kernel(..., inductor=...)``): RAdam's float16 rounding as eager torch's
KERNEL_INDUCTOR_OPTIONS = ("emulate_precision_casts",)


def kernel_inductor_options(inductor: tuple[tuple[str, Any], ...], dtypes: tuple[torch.dtype, ...],
                            device: torch.device) -> tuple[tuple[str, Any], ...]:
    """A kernel's own inductor settings for a call on ``dtypes`` and ``device``, with this torch's workaround:

    - torch 2.7 and 2.8 on CPU: the vectorised C++ code generator cannot emit the float16/bfloat16 casts that
      ``emulate_precision_casts`` asks for (``CppVecOverrides.to_dtype`` misspells its ``use_compute_types``
      parameter: ``TypeError: CppVecOverrides.to_dtype() got an unexpected keyword argument
      'use_compute_types'``; 2.13 has it right). Such a kernel (RAdam's in float16/bfloat16) compiles without
      vectorisation there (``cpp.simdlen=1``): the same numbers, slower; said once.
    """
    if (device.type == "cpu" and dict(inductor).get("emulate_precision_casts")
            and any(d in (torch.float16, torch.bfloat16) for d in dtypes) and _vectorised_casts_broken()):
        if "vectorised casts" not in _SAID:
            _SAID.add("vectorised casts")
            from .._logging import is_main_process, logger

            if is_main_process():
                logger.info("hf-adasam: torch %s's vectorised C++ code cannot emulate float16/bfloat16 rounding "
                            "(CppVecOverrides.to_dtype); RAdam's half-precision kernel compiles unvectorised on CPU",
                            torch.__version__)
        return (*inductor, ("cpp.simdlen", 1))
    return inductor


@functools.cache
def _vectorised_casts_broken() -> bool:
    """Whether inductor's ``CppVecOverrides.to_dtype`` lacks its ``use_compute_types`` parameter (torch 2.7-2.8)."""
    try:
        from torch._inductor.codegen.cpp import CppVecOverrides

        params = inspect.signature(CppVecOverrides.to_dtype).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return False
    return "use_compute_types" not in params and "cpp.simdlen" in _settings().inductor_keys


@functools.cache
def compiled(fn: Callable[..., Any], inductor: tuple[tuple[str, Any], ...] = ()) -> Callable[..., Any]:
    """``fn`` under ``torch.compile`` (public) with dynamic shapes and a full graph: one graph per kernel, shared by
    every optimizer instance. ``inductor``: the kernel's own inductor settings, (name, value) pairs (checked to
    exist by :func:`compile_unavailable`)."""
    return torch.compile(fn, fullgraph=True, dynamic=True, options={**INDUCTOR_OPTIONS, **dict(inductor)})


@contextlib.contextmanager
def compile_settings(device: torch.device) -> Iterator[None]:
    """Settings for compiling our kernels, in force around every call of a compiled kernel (tens of µs) and
    restored after it, so that a recompilation (a guard that fails, ``torch._dynamo.reset()``) compiles with them
    and the user's own ``torch.compile`` never sees them.

    - dynamo's recompile limit is at least :data:`RECOMPILE_LIMIT`: a new dtype, device or knob that changes a
      graph (a ``None`` floor, AdaShift's φ) compiles once more, and a busy process (several optimizers, each
      dtype) must not hit dynamo's default of 8 and drop to the foreach kernels. A higher limit (set by the user)
      is kept.
    - Sizes are not specialised: no duck sizing (two sizes that happen to be equal must not share a symbol) and
      sizes 0 and 1 are not special cases (``backed_size_oblivious``): a bucket without tail elements, or of one
      row, runs the same graph.
    - On CPU, inductor's instruction-set probe is skipped (``cpp.vec_isa_ok``): in a process with a cold cache
      it compiles and loads a test program per candidate ISA (AVX512, AVX2, ...), ~7 s on a 2-core x86 CPU before
      our first kernel. The ISAs the CPU reports (torch reads /proc/cpuinfo) are used as they are; a compiler that
      cannot build them fails the compile, and the kernel falls back to foreach with a warning. The probe's cache
      is cleared afterwards, so the user's own ``torch.compile`` still probes as usual.
    """
    s = _settings()
    limit = {s.recompile_limit: max(getattr(s.dynamo_config, s.recompile_limit), RECOMPILE_LIMIT)}
    probe = s.cpu_vec_isa.valid_vec_isa_list
    skip_probe = (device.type == "cpu" and s.inductor_config.cpp.vec_isa_ok is None
                  and probe.cache_info().currsize == 0)
    with s.dynamo_config.patch(limit), s.fx_config.patch(s.shapes), \
            s.inductor_config.patch({"cpp.vec_isa_ok": True} if skip_probe else {}):
        try:
            yield
        finally:
            if skip_probe:
                probe.cache_clear()


class CompileNeeded(Exception):
    """Raised by :func:`compiled_code_only` where a compiled kernel would have compiled on its call's sizes."""


@contextlib.contextmanager
def compiled_code_only() -> Iterator[None]:
    """Around a call of one of our compiled kernels: the call runs the code compiled for inputs like its own, or,
    where dynamo would compile on this call's sizes (the first call of a graph, after ``torch._dynamo.reset()``, a
    guard that fails), raises :class:`CompileNeeded` before anything ran: ``torch.compiler.set_stance(
    "fail_on_recompile")``, whose error is a ``RuntimeError`` naming the stance (torch 2.7-2.13). About 15 µs."""
    try:
        with torch.compiler.set_stance("fail_on_recompile"):
            yield
    except RuntimeError as err:
        if "fail_on_recompile" not in str(err):
            raise
        raise CompileNeeded(str(err).splitlines()[0]) from None


def hint_size(t: Tensor, hint: int) -> Tensor:
    """``t`` (1-D), marked so that a compilation takes its length to be ``hint`` whatever it is: inductor chooses
    which results share a loop from the bytes they share at these sizes (``torch._dynamo.mark_dynamic``'s
    ``hint_override``; the graph stays valid for every length, and the hint is part of inductor's cache key).
    Torch 2.7 and 2.8 have no ``hint_override``: there ``t`` is left as it is, and the graphs compiled on our
    synthetic buckets (:func:`compiled_code_only`) have their sizes."""
    if _hint_override():
        torch._dynamo.mark_dynamic(t, 0, hint_override=hint)
    return t


@functools.cache
def _hint_override() -> bool:
    import torch._dynamo

    return "hint_override" in inspect.signature(torch._dynamo.mark_dynamic).parameters


def assume_equal(a: Any, b: Any) -> None:
    """Inside a compiled graph: tell the compiler that sizes ``a`` and ``b`` are equal (``torch._check``)."""
    torch._check(a == b)


def storage_at(ptr: int, device: torch.device, nbytes: int) -> Any:
    """An untyped storage over ``nbytes`` of existing memory at ``ptr`` (not owned: the tensors there keep it
    alive). ``torch._C._construct_storage_from_data_pointer``, which inductor's CUDA graphs use for the same
    purpose; :func:`compile_unavailable` checked that it exists."""
    return torch._C._construct_storage_from_data_pointer(ptr, device, nbytes)


def version_counter(t: Tensor) -> int:
    """``t``'s version counter (``Tensor._version``: it moves with every in-place write)."""
    return t._version


def is_view(t: Tensor) -> bool:
    """Whether ``t`` is a view of another tensor (``Tensor._base`` is set)."""
    return t._base is not None


# ----------------------------------------------------------------------------------------------
# torch.optim.RAdam's internals (hf_adasam.optim.radam)
# ----------------------------------------------------------------------------------------------
# keyword arguments hf-adasam passes to torch's RAdam kernels
_RADAM_KWARGS = {"lr", "eps", "beta1", "beta2", "weight_decay", "decoupled_weight_decay", "maximize", "capturable",
                 "differentiable", "has_complex"}


@functools.cache
def radam_internals() -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """``torch.optim.radam``'s ``(_single_tensor_radam, _multi_tensor_radam)``, or ``None`` (said once) where the
    installed torch lacks them, ``RAdam._init_group``, or the keyword arguments hf-adasam passes; then
    :class:`~hf_adasam.optim.RAdam` runs ``torch.optim.RAdam.step`` itself."""
    from torch.optim import radam as torch_radam

    missing = []
    kernels = []
    for name in ("_single_tensor_radam", "_multi_tensor_radam"):
        fn = getattr(torch_radam, name, None)
        try:
            params = set(inspect.signature(fn).parameters) if fn is not None else set()
        except (TypeError, ValueError):
            params = set()
        if not params >= _RADAM_KWARGS:
            missing.append(f"torch.optim.radam.{name}({', '.join(sorted(_RADAM_KWARGS - params))}=...)")
        kernels.append(fn)
    if not callable(getattr(torch.optim.RAdam, "_init_group", None)):
        missing.append("torch.optim.RAdam._init_group")
    if missing:
        _say_once(_torch_moved(", ".join(missing), "hf_adasam RAdam runs torch.optim.RAdam.step itself (its own "
                                                    "foreach or single-tensor kernels; impl is ignored)"))
        return None
    return kernels[0], kernels[1]


def radam_init_group(optimizer: torch.optim.RAdam, group: dict[str, Any], *lists: list[Tensor]) -> bool:
    """``torch.optim.RAdam._init_group``: creates missing state and fills ``lists`` (params, grads, exp_avgs,
    exp_avg_sqs, state_steps) as ``torch.optim.RAdam.step`` does; returns whether any parameter is complex."""
    return optimizer._init_group(group, *lists)


def graph_capture_health_check(optimizer: torch.optim.Optimizer) -> None:
    """``torch.optim.Optimizer``'s check that ``capturable`` matches a CUDA-graph capture in progress, as
    ``torch.optim.RAdam.step`` runs it (``_accelerator_graph_capture_health_check``; torch 2.7-2.8:
    ``_cuda_graph_capture_health_check``). Where neither exists, said once and skipped."""
    for name in ("_accelerator_graph_capture_health_check", "_cuda_graph_capture_health_check"):
        check = getattr(optimizer, name, None)
        if check is not None:
            check()
            return
    _say_once(_torch_moved("torch.optim.Optimizer._accelerator_graph_capture_health_check",
                           "RAdam skips the check that capturable matches a CUDA-graph capture"))
