"""ms per ``optimizer.step()`` for every hf-adasam optimizer against ``torch.optim.AdamW`` and peers.

All optimizers live in one process over the same parameter list (MiniLM-L6's shapes: 103 tensors, 22.7M
parameters; BERT-base's with ``--size 110m``: 199, 110M; or ``--size lora7b``: the LoRA adapters of a 7B Llama,
r = 8 on q, k, v, o, gate, up and down of 32 layers: 448 tensors, 20M parameters) and are stepped interleaved, so
machine noise hits every row alike. Each row reports the median of ``--steps`` timed steps after
``--warmup`` untimed ones (which include the one-off compile, reported separately), and its calls per step:
torch's profiler's count of compiled-graph calls and of calls into torch's dispatcher (outermost aten ops and
compiled calls; on CUDA also the kernels launched), which says whether dispatch grows with the number of tensors.

Besides AdamW (fused, foreach) the rows include ``torch.optim.Adam(amsgrad=True)`` and the
``pytorch_optimizer`` version of a method where one exists (``--peers``; needs the ``bench`` extra).
The run also measures the machine's copy bandwidth, and each row's memory-traffic floor: the fp32
arrays the algorithm must read and write per element per step (``TRAFFIC``) × params × 4 bytes / bandwidth.

    python benchmarks/optim_step.py                  # compiled + foreach rows, 22.7M params
    python benchmarks/optim_step.py --impls foreach  # eager only (no compile wait)
    python benchmarks/optim_step.py --size 110m --impls compiled   # BERT-base, in memory-sized groups
    python benchmarks/optim_step.py --size lora7b                  # 448 LoRA tensors

When every row at once would not fit in ``--mem-gb`` (at 110M parameters AdaShift alone holds 12
copies of the model, its own and pytorch_optimizer's 25), the methods are packed into groups that do,
and each group runs in its own process with the AdamW / AMSGrad baselines beside it; every row is
then reported against the AdamW fused of its own process, and a method and its pytorch_optimizer
peer always share a process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import hf_adasam
from hf_adasam import create_optimizer

RESULTS = Path(__file__).parent / "results"

# fp32 arrays read + written per element per step by the least-traffic schedule of each algorithm (p and g read, p
# written, each state buffer read and written; two-pass algorithms read again): torch's baselines here, every
# hf-adasam optimizer's from its registry entry (``OptimEntry.traffic``)
TRAFFIC: dict[str, int] = {
    "adamw": 7,  # p r/w, g r, m r/w, v r/w
    "amsgrad": 9,  # + v_max r/w
    **{name: e.traffic for name, e in hf_adasam.OPTIMIZERS.items()},
}
# SAM's own tensor work per two-pass step: ‖g‖ (g r) + save w and w += ρ g/‖g‖ in one pass (p r, copy w, p w,
# g r) + restore (copy r, p w)
SAM_OPS = 7
# ASAM's (T = |w| + η): SAM's + ‖T g‖ and ‖T² g‖ in one pass (p r, g r); ‖e‖ = ρ‖T² g‖/‖T g‖ needs no pass over e
ASAM_OPS = SAM_OPS + 2
TRAFFIC["sam"] = TRAFFIC["adamw"] + SAM_OPS  # SAM's tensor work over AdamW
# untimed steps before timing: AdaShift only stores gradients until its window of n = 10 is full, and its
# compiled kernel is specialised (recompiled) for those first steps; timing must start in the steady state
WARMUP = 12
SAM = "sam"  # pseudo-name in --names: the SAM step's tensor work over AdamW fused, ours and pytorch_optimizer's
# the pytorch_optimizer class of the same method, with its knobs for the same algorithm as ours
PEERS: dict[str, tuple[str, dict]] = {
    "radam": ("RAdam", {}),
    "adai": ("Adai", {"lr": 0.1}),
    "adaiw": ("Adai", {"lr": 0.1, "weight_decouple": True}),
    "adashift": ("AdaShift", {}),
}


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); nothing to do on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(numel: int = 64 * 2**20, repeats: int = 20, device: torch.device | str = "cpu") -> float:
    """Bytes per second of ``a.add_(b)`` on fp32 buffers much larger than the caches: read a and b, write a.

    In place, like an optimizer step. (A plain ``dst.copy_(src)`` also reads every destination line before
    writing it, which the byte count 2 x size would miss, and then the floor comes out above AdamW fused.)
    """
    a, b = torch.randn(numel, device=device), torch.randn(numel, device=device)
    a.add_(b)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a.add_(b)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 3 * numel * 4 / statistics.median(times)


def state_arrays(make: Callable[[list[torch.Tensor]], torch.optim.Optimizer]) -> float:
    """Copies of the parameters an optimizer keeps as state, read off a small probe after a dozen steps.

    (A dozen covers AdaShift's window of n = 10 past gradients, which fills one step at a time.)
    """
    p = torch.zeros(16, 16, requires_grad=True)
    opt = make([p])
    for i in range(12):
        p.grad = torch.full_like(p, 1e-3 * (i + 1))
        opt.step()
    return array_bytes(opt.state) / (p.numel() * p.element_size())


def array_bytes(x: object) -> int:
    """Bytes of the arrays in ``x`` (tensors in nested lists, tuples, deques, dicts); step counters and other
    0-d or one-element tensors are not arrays."""
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size() if x.numel() > 1 else 0
    if isinstance(x, (list, tuple, deque)):
        return sum(array_bytes(v) for v in x)
    if isinstance(x, dict):
        return sum(array_bytes(v) for v in x.values())
    return 0


def state_bytes(opt: torch.optim.Optimizer) -> tuple[int, int]:
    """(bytes of the optimizer's state, bytes of SAM's saved copy of w) held between steps.

    ``hf_adasam.SAM`` shares its base optimizer's ``state`` and keeps the copy of w in ``opt.sam``;
    ``pytorch_optimizer.SAM`` keeps its copy (``old_p``) in ``state`` only within a step, so it holds none between.
    """
    base = getattr(opt, "base_optimizer", None)
    n = array_bytes(opt.state) + (array_bytes(base.state) if base is not None and base.state is not opt.state else 0)
    sam = getattr(opt, "sam", None)
    return n, (sam.state_bytes if sam is not None and hasattr(sam, "state_bytes") else 0)


SIZES = {"tiny": (64, 1, 256, 1000), "22m": (384, 6, 1536, 30522), "110m": (768, 12, 3072, 30522)}
# LoRA: (hidden, intermediate, layers, rank) of a Llama; lora_tiny keeps the 448 tensors at 0.3M parameters
LORA = {"lora7b": (4096, 11008, 32, 8), "lora_tiny": (64, 172, 32, 8)}
SHAPE_SETS = [*SIZES, *LORA]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def shapes_of(size: str) -> list[tuple[int, ...]]:
    """The parameter shapes of a ``--size``: BERT's (:func:`bert_shapes`) or LoRA adapters' (:func:`lora_shapes`)."""
    return lora_shapes(size) if size in LORA else bert_shapes(size)


def lora_shapes(size: str) -> list[tuple[int, ...]]:
    """LoRA's trainable tensors on a Llama: A (r, in) and B (out, r) for q, k, v, o (hidden to hidden), gate and up
    (hidden to intermediate) and down (intermediate to hidden) of every layer: 7B (``lora7b``), 448 tensors, 20.0M
    parameters."""
    h, inter, layers, r = LORA[size]
    shapes: list[tuple[int, ...]] = []
    for _ in range(layers):
        for fan_in, fan_out in [(h, h)] * 4 + [(h, inter)] * 2 + [(inter, h)]:
            shapes += [(r, fan_in), (fan_out, r)]
    return shapes


def bert_shapes(size: str) -> list[tuple[int, ...]]:
    """BERT's parameter shapes (MiniLM-L6 at 22m, BERT-base at 110m; ``tiny``, 0.1M, for smoke runs)."""
    h, layers, inter, vocab = SIZES[size]
    shapes: list[tuple[int, ...]] = [(vocab, h), (512, h), (2, h), (h,), (h,)]
    for _ in range(layers):
        shapes += [(h, h), (h,)] * 4 + [(h,), (h,), (inter, h), (inter,), (h, inter), (h,), (h,), (h,)]
    return [*shapes, (h, h), (h,)]


def make_ours(name: str, impl: str, ps: list | list[dict]) -> torch.optim.Optimizer:
    """The registry's representative run of ``name`` (its lr on the method's own scale, and ``bench``'s knobs where a
    default would leave part of the method idle: CProp-SGD's momentum). radam's foreach row is torch's own
    ``_multi_tensor_radam``."""
    return create_optimizer(name, ps, **hf_adasam.OPTIMIZERS[name].bench_kwargs(), impl=impl)


def make_peer(name: str, ps: list | list[dict]) -> torch.optim.Optimizer:
    import pytorch_optimizer

    cls_name, kw = PEERS[name]
    return getattr(pytorch_optimizer, cls_name)(ps, **{"lr": 1e-3, **kw})


def plan_groups(args: argparse.Namespace, numel: int) -> list[list[str]]:
    """Pack the methods into groups whose rows (with the baselines) fit in ``--mem-gb``."""
    bytes_per_copy = numel * DTYPES[args.dtype].itemsize
    baseline = (1 + 2) * 2 + 1  # two AdamW rows: params + m + v each, plus the shared grads
    if args.peers == "true":
        baseline += 1 + 3  # AMSGrad: params + m + v + v_max
    cost, transients = {}, {}
    for name in args.names.split(","):
        if name == SAM:  # params + AdamW's m, v + the saved copy of w, for ours and the peer
            cost[name] = 4.0 * (2 if args.peers == "true" else 1)
            continue
        impls = args.impls.split(",")
        state = state_arrays(lambda ps, n=name: make_ours(n, "foreach", ps))
        arrays = len(impls) * (1 + state)
        # one step at a time allocates temporaries: a foreach row or a peer up to 7 arrays (the most measured at 22m:
        # CProp-Adam foreach 28.2 B/param; Adai's peer 16, AdaShift's 12), a compiled row about none
        transient = 7 if "foreach" in impls else 0
        if args.peers == "true" and name in PEERS:
            arrays += 1 + state_arrays(lambda ps, n=name: make_peer(n, ps))
            transient = 7
        transients[name] = transient
        cost[name] = arrays
    budget = args.mem_gb * 2**30 / bytes_per_copy - baseline
    groups: list[list[str]] = []
    used: list[float] = []  # resident arrays, and the largest one-step temporaries of a group's rows
    peak: list[float] = []
    too_big = [n for n, a in cost.items() if a + transients.get(n, 0) > budget]
    if too_big:
        need = max(cost[n] + transients.get(n, 0) for n in too_big) + baseline
        raise SystemExit(f"error: --mem-gb {args.mem_gb:g}: {', '.join(too_big)} alone "
                         f"{'needs' if len(too_big) == 1 else 'need'} about "
                         f"{need * bytes_per_copy / 2**30:.1f} GiB with the baselines at --impls {args.impls} "
                         f"--peers {args.peers}; pass " + ", ".join(
                             ([] if args.impls == "compiled" else ["--impls compiled"])
                             + ([] if args.peers != "true" else ["--peers false"]) + ["a larger --mem-gb"]))
    for name, arrays in cost.items():  # first fit
        fits = (i for i in range(len(groups))
                if used[i] + arrays + max(peak[i], transients.get(name, 0)) <= budget)
        i = next(fits, len(groups))
        if i == len(groups):
            groups.append([])
            used.append(0.0)
            peak.append(0.0)
        groups[i].append(name)
        used[i] += arrays
        peak[i] = max(peak[i], transients.get(name, 0))
    return groups


def run_groups(args: argparse.Namespace, groups: list[list[str]]) -> dict:
    """One process per group; rows keep their own process's AdamW fused as reference."""
    merged: dict = {"rows": [], "groups": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, names in enumerate(groups):
            stem = Path(tmp) / f"group{i}"
            cmd = [sys.executable, __file__, "--size", args.size, "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--impls", args.impls, "--names", ",".join(names), "--threads",
                   str(args.threads), "--peers", args.peers, "--out", str(stem), "--mem-gb", "inf",
                   "--device", args.device, "--dtype", args.dtype, "--rss", args.rss]
            print(f"group {i + 1}/{len(groups)}: {', '.join(names)}", flush=True)
            subprocess.run(cmd, check=True)
            res = json.loads(stem.with_suffix(".json").read_text())
            ref = next(r for r in res["rows"] if r["optimizer"] == "AdamW fused")
            merged["groups"].append({"names": names, "adamw_fused_ms": ref["ms_median"],
                                     "copy_bandwidth_GBps": res["machine"]["copy_bandwidth_GBps"]})
            for r in res["rows"]:
                if i == 0 or not r["optimizer"].startswith(("AdamW ", "Adam amsgrad")):
                    merged["rows"].append({**r, "group": i + 1})
            merged["machine"] = res["machine"]
    merged["machine"]["copy_bandwidth_GBps"] = statistics.median(g["copy_bandwidth_GBps"] for g in merged["groups"])
    return merged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=SHAPE_SETS, default="22m",
                    help="parameter shapes: MiniLM-L6 (22m), BERT-base (110m), the LoRA adapters of a 7B Llama "
                         "(lora7b), or for smoke tests a 0.1M model (tiny) and LoRA's 448 tensors at 0.3M parameters "
                         "(lora_tiny)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per row (interleaved)")
    ap.add_argument("--warmup", type=int, default=WARMUP, help="untimed steps per row first (compile included)")
    ap.add_argument("--impls", default="compiled,foreach", help="hf-adasam kernels to time, comma-separated")
    ap.add_argument("--names", default=",".join([*hf_adasam.OPTIMIZERS, SAM]),
                    help=f"optim names to time, comma-separated; {SAM!r} is SAM's tensor work over AdamW fused")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--peers", default="true", choices=["true", "false"],
                    help="also time torch's AMSGrad and pytorch_optimizer's version of each method")
    ap.add_argument("--mem-gb", type=float, default=14.0,
                    help="memory the rows of one process may hold; more rows than fit run in groups")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where parameters, gradients and states live (cuda: timings synchronise the device)")
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES),
                    help="dtype of parameters, gradients and hence states (not autocast: the step itself in that "
                         "dtype); the floors count its bytes")
    ap.add_argument("--rss", default="child", choices=["child", "off"],
                    help="CPU memory per row: 'child' runs each row again in a fresh process (glibc returning "
                         "freed blocks to the OS at once) and reads its peak RSS; on CUDA the peak comes from "
                         "torch.cuda.max_memory_allocated in this process")
    ap.add_argument("--out", default=None, help="results stem (default benchmarks/results/optim_step_<size>, "
                                                "with _<device>_<dtype> appended unless cpu fp32)")
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)  # internal: one row's memory, as JSON
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        print(json.dumps(rss_child(args, args.rss_child)))
        return
    suffix = "" if (args.device, args.dtype) == ("cpu", "fp32") else f"_{args.device}_{args.dtype}"
    stem = Path(args.out) if args.out else RESULTS / f"optim_step_{args.size}{suffix}"
    numel = sum(math.prod(s) for s in shapes_of(args.size))
    groups = plan_groups(args, numel) if math.isfinite(args.mem_gb) else [args.names.split(",")]
    if len(groups) > 1:
        write(stem, run_groups(args, groups))
        return
    write(stem, measure(args))


class Problem:
    """BERT-shaped parameters with fixed gradients; every optimizer gets its own fresh parameters."""

    def __init__(self, size: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        self.shapes = shapes_of(size)
        self.device, self.dtype = torch.device(device), dtype
        self.gen = torch.Generator().manual_seed(0)
        self.grads = [self._tensor(s, 1e-3) for s in self.shapes]
        self.numel = sum(t.numel() for t in self.grads)

    def _tensor(self, shape: tuple[int, ...], scale: float = 1.0) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen).mul_(scale).to(self.device, self.dtype)

    def params(self) -> list[torch.Tensor]:
        ps = [self._tensor(s).requires_grad_() for s in self.shapes]
        self.set_grads(ps)
        return ps

    def set_grads(self, ps: list[torch.Tensor]) -> torch.Tensor:
        """Shared gradients (optimizers must not write into them); as a SAM closure, the backward without a model."""
        for p, gr in zip(ps, self.grads, strict=True):
            p.grad = gr
        return torch.zeros((), device=self.device)

    def groups(self, ps: list[torch.Tensor] | None = None) -> list[dict]:
        """Trainer's layout: matrices decay, vectors (bias, LayerNorm) do not (LoRA: one group)."""
        ps = self.params() if ps is None else ps
        groups = [{"params": [p for p in ps if p.dim() > 1], "weight_decay": 0.01},
                  {"params": [p for p in ps if p.dim() <= 1], "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]


@dataclass
class Row:
    label: str
    step: Callable[[], None]
    opt: torch.optim.Optimizer
    arrays: int  # TRAFFIC: arrays read + written per element per step


def row_keys(args: argparse.Namespace) -> list[str]:
    """Every row of the run as a key ``build_row`` understands (also passed to a ``--rss-child``)."""
    peers = args.peers == "true"
    keys = ["adamw_fused", "adamw_foreach", *(["amsgrad"] if peers else [])]
    impls = args.impls.split(",")
    for name in args.names.split(","):
        if name == SAM:
            keys += [f"sam:{impl}" for impl in impls if impl != "single"] + (["sam_peer"] if peers else [])
            continue
        keys += [f"{name}:{impl}" for impl in impls]
        if peers and name in PEERS:
            keys.append(f"peer:{name}")
    return keys


def build_row(key: str, prob: Problem) -> Row:
    if key in ("adamw_fused", "adamw_foreach"):
        kind = key.split("_")[1]
        opt = torch.optim.AdamW(prob.groups(), lr=1e-3, **{kind: True})
        return Row(f"AdamW {kind}", opt.step, opt, TRAFFIC["adamw"])
    if key == "amsgrad":
        opt = torch.optim.Adam(prob.groups(), lr=1e-3, amsgrad=True, foreach=True)
        return Row("Adam amsgrad (torch foreach)", opt.step, opt, TRAFFIC["amsgrad"])
    if key.startswith("sam:"):  # SAM's tensor work over AdamW fused, the closure standing in for forward/backward
        impl = key.removeprefix("sam:")
        ps = prob.params()
        ours = hf_adasam.SAM(torch.optim.AdamW(prob.groups(ps), lr=1e-3, fused=True), rho=0.05)
        ours.sam.perturbation.impl = impl  # the SAM step's own tensor work: compiled or foreach

        def ours_step() -> None:
            ours.zero_grad()
            ours.step(lambda: prob.set_grads(ps))

        return Row(f"SAM over AdamW fused (hf_adasam.SAM, {impl})", ours_step, ours, TRAFFIC[SAM])
    if key == "sam_peer":
        import pytorch_optimizer

        peer_ps = prob.params()
        peer = pytorch_optimizer.SAM(prob.groups(peer_ps), torch.optim.AdamW, rho=0.05, lr=1e-3, fused=True)

        def peer_step() -> None:
            peer.first_step(zero_grad=True)
            prob.set_grads(peer_ps)
            peer.second_step()

        return Row("SAM over AdamW fused (pytorch_optimizer.SAM)", peer_step, peer, TRAFFIC[SAM])
    if key.startswith("peer:"):
        name = key.removeprefix("peer:")
        opt = make_peer(name, prob.groups())
        return Row(f"{name} (pytorch_optimizer.{PEERS[name][0]})", opt.step, opt, TRAFFIC[name])
    name, impl = key.split(":")
    opt = make_ours(name, impl, prob.groups())
    return Row(f"{name} {impl}", opt.step, opt, TRAFFIC[name])


def calls_per_step(step: Callable[[], None], device: torch.device) -> dict[str, int]:
    """One step under torch's profiler: compiled-graph calls, calls into torch's dispatcher (aten ops and compiled
    calls not inside another one: what a step costs in dispatch, whatever each call does) and, on CUDA, kernels
    launched on the device."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    events = prof.events()

    def counted(e) -> bool:
        return e.name.startswith(("aten::", "Torch-Compiled Region"))

    def outermost(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if counted(p):
                return False
            p = p.cpu_parent
        return True

    calls = [e for e in events if counted(e) and outermost(e)]
    out = {"compiled_calls": sum(e.name.startswith("Torch-Compiled Region") for e in calls), "calls": len(calls)}
    if device.type == "cuda":
        out["kernel_launches"] = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA
                                     and not e.name.startswith(("Memcpy", "Memset")))
    return out


def _proc_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def rss_child(args: argparse.Namespace, key: str) -> dict:
    """One row alone in this (fresh) process: peak RSS while it steps, after ``--warmup`` steps (compile included).

    The parent starts it with ``MALLOC_MMAP_THRESHOLD_`` fixed, so glibc serves every large block by mmap and
    returns it to the OS when freed: RSS then counts live tensors, and the peak counts every temporary.
    The peak RSS counter (VmHWM) is reset through ``/proc/self/clear_refs`` before the measured steps.
    """
    if key == "sam_peer" or key.startswith("peer:"):
        import pytorch_optimizer  # noqa: F401  (its import is not the row's memory)
    prob = Problem(args.size, args.device, DTYPES[args.dtype])
    base = _proc_kib("VmRSS") * 1024  # the process with the shared gradients
    row = build_row(key, prob)
    param_bytes = prob.numel * prob.dtype.itemsize  # the row's own parameters
    for _ in range(args.warmup):
        row.step()
    before = _proc_kib("VmRSS") * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    for _ in range(3):
        row.step()
    peak = _proc_kib("VmHWM") * 1024
    return {"label": row.label, "peak_rss_MB": peak / 2**20,
            "peak_over_params_grads_B_per_param": (peak - base - param_bytes) / prob.numel,
            "step_transient_B_per_param": (peak - before) / prob.numel}


def memory_by_child(args: argparse.Namespace, keys: list[str]) -> dict[str, dict]:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = {}
    for key in keys:
        cmd = [sys.executable, __file__, "--size", args.size, "--warmup", str(args.warmup), "--impls", args.impls,
               "--threads", str(args.threads), "--device", args.device, "--dtype", args.dtype, "--rss-child", key]
        res = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"memory {r['label']}: peak RSS {r['peak_rss_MB']:.0f} MB", flush=True)
        out[r["label"]] = r
    return out


def measure(args: argparse.Namespace) -> dict:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    prob = Problem(args.size, args.device, dtype)
    shapes, numel = prob.shapes, prob.numel
    rows: dict[str, Row] = {}
    compile_s: dict[str, float] = {}
    calls: dict[str, dict[str, int]] = {}
    memory: dict[str, dict] = {}
    keys = row_keys(args)

    for key in keys:
        row = build_row(key, prob)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            row.step()
        sync(device)
        compile_s[row.label] = time.perf_counter() - t0
        calls[row.label] = calls_per_step(row.step, device)
        print(f"warm-up {row.label}: {compile_s[row.label]:.1f} s; calls per step {calls[row.label]}", flush=True)
        rows[row.label] = row
        if device.type == "cuda":  # exact: the caching allocator counts live tensors
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            for _ in range(3):
                row.step()
            sync(device)
            transient = torch.cuda.max_memory_allocated(device) - before
            held = sum(state_bytes(row.opt))
            memory[row.label] = {"peak_over_params_grads_B_per_param": (held + transient) / numel,
                                 "step_transient_B_per_param": transient / numel}

    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.steps):  # interleaved: one step of each per round
        for label, row in rows.items():
            sync(device)
            t0 = time.perf_counter()
            row.step()
            sync(device)
            times[label].append(time.perf_counter() - t0)

    bandwidth = copy_bandwidth(device=device)
    if device.type == "cpu" and args.rss == "child":
        memory = memory_by_child(args, keys)
    ref = statistics.median(times["AdamW fused"])
    table = []
    for label, ts in times.items():
        med = statistics.median(ts)
        floor = rows[label].arrays * numel * dtype.itemsize / bandwidth
        held, sam_copy = state_bytes(rows[label].opt)
        table.append({"optimizer": label, "ms_median": med * 1e3, "vs_adamw_fused": med / ref,
                      "arrays_per_element": rows[label].arrays, "floor_ms": floor * 1e3, "vs_floor": med / floor,
                      "ms_p10": sorted(ts)[len(ts) // 10] * 1e3, "ms_p90": sorted(ts)[9 * len(ts) // 10] * 1e3,
                      "warmup_s": compile_s[label], "state_B_per_param": (held + sam_copy) / numel,
                      "sam_copy_B_per_param": sam_copy / numel, **calls[label], **memory.get(label, {})})
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(), "numel": numel,
               "tensors": len(shapes), "steps": args.steps, "warmup": args.warmup,
               "copy_bandwidth_GBps": bandwidth / 1e9, "device": device_name(device), "dtype": args.dtype}
    return {"machine": machine, "rows": table}


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return platform.processor() or platform.machine()


def _cell(r: dict, key: str, fmt: str) -> str:
    return format(r[key], fmt) if key in r else "–"


def write(stem: Path, result: dict) -> None:
    machine, table, groups = result["machine"], result["rows"], result.get("groups")
    dtype = machine.get("dtype", "fp32")
    lines = [f"# optimizer.step() on {machine['numel'] / 1e6:.1f}M {dtype} params ({machine['tensors']} tensors), "
             f"{machine.get('device', machine['cpu'])}, {machine['threads']} threads, torch {machine['torch']}; "
             f"copy bandwidth {machine['copy_bandwidth_GBps']:.1f} GB/s", ""]
    if groups:
        lines += [f"Rows ran in {len(groups)} processes (memory); each is against its own process's AdamW fused:",
                  ""]
        lines += [f"- group {i + 1}: {', '.join(g['names'])} — AdamW fused {g['adamw_fused_ms']:.1f} ms, "
                  f"copy bandwidth {g['copy_bandwidth_GBps']:.1f} GB/s" for i, g in enumerate(groups)]
        lines.append("")
    group_col = " group |" if groups else ""
    launches = any("kernel_launches" in r for r in table)
    lines += ["| optimizer | ms / step (median) | p10–p90 | × AdamW fused | calls / step (compiled) | "
              + ("kernel launches / step | " if launches else "") + "arrays r+w | floor ms | × floor | "
              "warm-up s (incl. compile) | state B/param | of it SAM's copy of w | peak over params+grads B/param | "
              "step transient B/param | peak RSS MB |" + group_col,
              "|---|---:|---:|---:|---:|" + ("---:|" if launches else "")
              + "---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if groups else "")]
    for r in table:
        calls = f"{r['calls']} ({r['compiled_calls']})" if "calls" in r else "–"
        lines.append(f"| {r['optimizer']} | {r['ms_median']:.1f} | {r['ms_p10']:.1f}–{r['ms_p90']:.1f} | "
                     f"{r['vs_adamw_fused']:.2f} | {calls} | "
                     + (f"{_cell(r, 'kernel_launches', 'd')} | " if launches else "")
                     + f"{r['arrays_per_element']} | {r['floor_ms']:.1f} | "
                     f"{r['vs_floor']:.2f} | {r['warmup_s']:.1f} | {_cell(r, 'state_B_per_param', '.1f')} | "
                     f"{_cell(r, 'sam_copy_B_per_param', '.1f')} | "
                     f"{_cell(r, 'peak_over_params_grads_B_per_param', '.1f')} | "
                     f"{_cell(r, 'step_transient_B_per_param', '.1f')} | {_cell(r, 'peak_rss_MB', '.0f')} |"
                     + (f" {r['group']} |" if groups else ""))
    lines += ["", "Calls / step: torch's profiler over one step after the warm-up: calls into torch's dispatcher (aten "
              "ops and compiled-graph calls not inside another one), in brackets the compiled-graph calls"
              + ("; kernel launches: kernels the step ran on the GPU" if launches else "") + ".",
              "", "Memory: state B/param is what the optimizer holds between steps (its state tensors, and for "
              "hf_adasam.SAM the saved copy of w), exact; the peak columns come from a fresh process per row "
              "(CPU: peak RSS with glibc returning freed blocks at once) or torch.cuda.max_memory_allocated (CUDA), "
              "over 3 steps after the warm-up. Step transient: the peak above what the process held before "
              "those steps (temporaries of one step); peak over params+grads also counts the state and, on CPU, "
              "what compiling left resident."]
    md = "\n".join(lines)
    print(md)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(md + "\n")


if __name__ == "__main__":
    main()
