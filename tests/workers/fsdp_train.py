"""Run by tests/test_fsdp.py under ``torchrun --nproc_per_node 2`` (CPU, gloo): FSDP2 against one unsharded process.

Every check builds the tiny BERT twice from one seed: an unsharded copy that sees each whole batch (the
reference: what one process on the whole batch computes) and a copy under ``fully_shard`` (each encoder layer
and the root) whose rank sees half of the batch. Both take the same steps; each rank writes what it measured
(deviations relative to how far the reference moved the weights, AE-SAM's decisions, bytes of SAM's state,
step times) to ``<out>.rank<N>.pt`` for the test to check.

The reference runs inside the same distributed job, so its own step (unsharded, ``sync_perturbation=True``)
all-reduces its pass-1 gradients, which are the same whole-batch gradients on both ranks: (a + a) / 2 = a
exactly, so it equals a single process bit for bit.

Two references per SAM case. In float32 the reference computes each whole batch's gradient as the mean of
its two halves' gradients (two backward calls, as one process accumulating would): that is the sum FSDP's
reduce-scatter forms, so what is left is what the sharding changes (‖g‖ and ‖e‖ from shards, e on
shards). Against one backward over the whole batch the float32 rounding of the batch mean differs, and
Adam-type steps (m/√v) magnify that without bound where a coordinate's gradient cancels to near 0 (a sign
flip moves it 2·lr): that deviation is measured and reported; the same comparison in float64 is exact to
rounding and checked tightly.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import distribute_tensor

import hf_adasam
from hf_adasam.sharpness import SAMConfig, SAMStep
from tests._kernel_net import VARIANTS
from tests._tiny import SEQ, VOCAB, tiny_bert

STEPS, ACCUM, BATCH = 5, 2, 8  # BATCH: one micro-batch, whole; each rank gets BATCH // 2

SAM_CASES = {  # name: (base optimizer, SAM knobs)
    "sam_sgd": ("sgd", dict(rho=0.05)),  # linear in the gradient: float32 rounding stays rounding-sized
    "sam_adamw": ("adamw", dict(rho=0.05)),
    "sam_adasam": ("adasam", dict(rho=0.05)),
    "asam_adamw": ("adamw", dict(adaptive=True)),
    "ae_adasam": ("adasam", dict(rho=0.05, policy="ae", ae_lambdas=(0.0, 0.0))),
    "looksam_adamw": ("adamw", dict(rho=0.05, policy="looksam", looksam_k=2)),
}


def shard(model: torch.nn.Module, mp: MixedPrecisionPolicy | None = None) -> torch.nn.Module:
    kw = {"mp_policy": mp} if mp is not None else {}
    for layer in model.bert.encoder.layer:
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    return model


def full(p: torch.Tensor) -> torch.Tensor:
    return (p.full_tensor() if hasattr(p, "full_tensor") else p).detach()


def rel_dev(sharded: torch.nn.Module, ref: torch.nn.Module, start: list[torch.Tensor]) -> tuple[float, float]:
    """(max |w_sharded - w_ref| / max |w_ref - w_0|, the distance moved)."""
    moved = max((p.detach() - s).abs().max().item() for p, s in zip(ref.parameters(), start, strict=True))
    dev = max((full(a).double() - b.detach().double()).abs().max().item()
              for a, b in zip(sharded.parameters(), ref.parameters(), strict=True))
    return dev / moved, moved


def batches(step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + micro)
    ids = torch.randint(1, VOCAB, (BATCH, SEQ), generator=g)
    return ids, (ids[:, 0] >= VOCAB // 2).long()


def base_optimizer(name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.1, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01, foreach=True)
    return hf_adasam.AdaSAM(params, lr=1e-2, weight_decay=0.01, impl="foreach")


def sam_trajectory(model: torch.nn.Module, base: str, knobs: dict, parts: list[slice],
                   restored: list[bool] | None = None) -> tuple[SAMStep, list[float]]:
    """STEPS optimizer steps of ACCUM micro-batches, each with its own perturbation (SAMTrainer's step).

    Each micro-batch's gradient is the mean over ``parts`` of the parts' gradients (one backward each)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = base_optimizer(base, params)
    sam = SAMStep.from_config(SAMConfig.resolve({**knobs, "sync_perturbation": True}, sam_asked=True),
                              total_steps=STEPS)
    decisions: list[float] = []
    for t in range(STEPS):
        for micro in range(ACCUM):
            ids, labels = batches(t, micro)

            def backward(ids=ids, labels=labels) -> torch.Tensor:
                total = torch.zeros(())
                for part in parts:
                    loss = model(input_ids=ids[part], labels=labels[part]).loss / (ACCUM * len(parts))
                    loss.backward()
                    total += loss.detach().float()
                return total

            before = sam.stats.total_second_passes
            w = [full(p).clone() for p in params] if restored is not None else None
            sam.micro_step(params, backward, t=t)
            if restored is not None:
                restored.append(all(torch.equal(a, full(p)) for a, p in zip(w, params, strict=True)))
            decisions.append(float(sam.stats.total_second_passes - before))
        opt.step()
        opt.zero_grad()
    return sam, decisions


HALVES = [slice(0, BATCH // 2), slice(BATCH // 2, BATCH)]


def check_sam(out: dict, rank: int) -> None:
    mine = [HALVES[rank]]
    for name, (base, knobs) in SAM_CASES.items():
        res = {}
        for dtype in (torch.float32, torch.float64):
            ref = tiny_bert(num_labels=3, dtype=dtype)
            whole = copy.deepcopy(ref)
            start = [p.detach().clone() for p in ref.parameters()]
            sharded = shard(copy.deepcopy(ref))
            sh_sam, sh_dec = sam_trajectory(sharded, base, knobs, mine)
            _, whole_dec = sam_trajectory(whole, base, knobs, [slice(None)])
            tag = "32" if dtype == torch.float32 else "64"
            res[f"dev_whole{tag}"], res[f"moved{tag}"] = rel_dev(sharded, whole, start)
            res[f"decisions{tag}"], res[f"ref_decisions{tag}"] = sh_dec, whole_dec
            if dtype == torch.float32:
                ref_sam, ref_dec = sam_trajectory(ref, base, knobs, HALVES)
                res["dev_halves32"], _ = rel_dev(sharded, ref, start)
                # without the attention key biases: their exact gradient is 0 (softmax ignores a constant shift of
                # the scores), so in float32 it is rounding noise, which m/sqrt(v) turns into +-lr steps
                keep = [("key.bias" not in n) for n, _ in ref.named_parameters()]
                moved = max((p.detach() - s).abs().max().item() for p, s in zip(ref.parameters(), start, strict=True))
                res["dev_halves32_without_key_bias"] = max(
                    (full(a).double() - b.detach().double()).abs().max().item()
                    for a, b, k in zip(sharded.parameters(), ref.parameters(), keep, strict=True) if k) / moved
                res["worst_param32"] = max(
                    ((full(a).double() - b.detach().double()).abs().max().item(), n)
                    for (n, a), b in zip(sharded.named_parameters(), ref.parameters(), strict=True))[1]
                # the reference's own float32 sensitivity to the order of summation: whole batch vs two halves
                res["ref_whole_vs_halves32"], _ = rel_dev(whole, ref, start)
                res["ref_decisions_halves32"] = ref_dec
                res["state_bytes"], res["ref_state_bytes"] = sh_sam.state_bytes, ref_sam.state_bytes
        out[name] = res


def check_wrapper_and_resume(out: dict, rank: int, tmp: str) -> None:
    """hf_adasam.SAM (the plain-loop face) under FSDP2, and a resume from a per-rank checkpoint."""
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)

    def run(model, steps, part, opt=None, first=0):
        if opt is None:
            opt = hf_adasam.SAM(hf_adasam.AdaSAM(model.parameters(), lr=1e-2, impl="foreach"), rho=0.05,
                                policy="looksam", looksam_k=2, sync_perturbation=True)
        for t in range(first, first + steps):
            ids, labels = batches(t, 0)

            def closure(ids=ids[part], labels=labels[part]):
                loss = model(input_ids=ids, labels=labels).loss
                loss.backward()
                return loss

            opt.zero_grad()
            opt.step(closure)
        return opt

    ref = tiny_bert(num_labels=3)
    start = [p.detach().clone() for p in ref.parameters()]
    whole = shard(copy.deepcopy(ref))
    run(ref, STEPS, slice(None))
    run(whole, STEPS, half)
    out["wrapper_looksam_adasam"] = dict(zip(("dev", "moved"), rel_dev(whole, ref, start), strict=True))
    # resume: 3 steps, save (sharded weights, optimizer state and SAM's state: this rank's shards), load into a
    # fresh sharded model and optimizer, 2 more steps; against the uninterrupted sharded run above
    first = shard(tiny_bert(num_labels=3))
    opt = run(first, 3, half)
    path = f"{tmp}.ckpt.rank{rank}.pt"
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, path)
    second = shard(tiny_bert(num_labels=3, seed=7))  # other weights: the checkpoint must replace them
    opt2 = hf_adasam.SAM(hf_adasam.AdaSAM(second.parameters(), lr=1e-2, impl="foreach"), rho=0.05,
                         policy="looksam", looksam_k=2, sync_perturbation=True)
    ckpt = torch.load(path, weights_only=False)
    second.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    run(second, 2, half, opt=opt2, first=3)
    out["resume_max_abs_diff"] = max((full(a) - full(b)).abs().max().item()
                                     for a, b in zip(second.parameters(), whole.parameters(), strict=True))


def check_mixed_precision(out: dict, rank: int) -> None:
    """FSDP2's MixedPrecisionPolicy (bf16 compute, fp32 reduce): SAM against the same sharded run's plain step."""
    half = HALVES[rank]
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    start = [p.detach().clone() for p in tiny_bert(num_labels=3).parameters()]
    sharded = shard(tiny_bert(num_labels=3), mp)
    restored: list[bool] = []
    sam, _ = sam_trajectory(sharded, "adamw", dict(rho=0.05), [half], restored)
    moved = max((full(p) - s).abs().max().item() for p, s in zip(sharded.parameters(), start, strict=True))
    out["mixed_precision"] = dict(
        restored_bit_for_bit=restored, moved=moved, second_passes=sam.stats.total_second_passes,
        mean_perturbation_norm=sam.stats.perturbation_norm_sum / max(sam.stats.second_passes, 1),
        param_dtypes=sorted({str(p.dtype) for p in sharded.parameters()}))


def check_lora(out: dict, rank: int) -> None:
    """LoRA (PEFT) under FSDP2, float64: only the adapters are perturbed and trained; against one process."""
    from peft import LoraConfig, get_peft_model

    def lora_model() -> torch.nn.Module:
        model = get_peft_model(tiny_bert(num_labels=3, dtype=torch.float64),
                               LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights="gaussian"))
        return model

    ref = lora_model()
    start = [p.detach().clone() for p in ref.parameters()]
    sharded = copy.deepcopy(ref)
    for layer in sharded.base_model.model.bert.encoder.layer:
        fully_shard(layer)
    fully_shard(sharded)

    def run(model, parts):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-2, foreach=True)
        sam = SAMStep.from_config(SAMConfig.resolve({"rho": 0.05, "sync_perturbation": True}, sam_asked=True))
        for t in range(STEPS):
            ids, labels = batches(t, 0)

            def backward(ids=ids, labels=labels):
                for part in parts:
                    (model(input_ids=ids[part], labels=labels[part]).loss / len(parts)).backward()
                return torch.zeros(())

            sam.micro_step(params, backward, t=t)
            opt.step()
            opt.zero_grad()

    run(ref, [slice(None)])
    run(sharded, [HALVES[rank]])
    dev, moved = rel_dev(sharded, ref, start)
    frozen_still = all(torch.equal(full(p), s) for p, s in zip(sharded.parameters(), start, strict=True)
                       if not p.requires_grad)
    out["lora"] = dict(dev=dev, moved=moved, frozen_unchanged=frozen_still,
                       trainable=sum(p.requires_grad for p in sharded.parameters()))


def check_optimizers(out: dict, variants: list[str], impls: list[str], device: str = "cpu") -> None:
    """Each optimizer under FSDP2 without SAM against its unsharded run (float32) and a float64 run."""
    for name in variants:
        v = VARIANTS[name]
        for impl in impls:
            if impl not in v.impls:
                continue
            ref = tiny_bert(num_labels=3).to(device)  # 3 labels: the classifier's (3, 32) and (3,) shard unevenly
            r64 = copy.deepcopy(ref).double()
            sharded = shard(copy.deepcopy(ref))
            start = [p.detach().clone().double() for p in ref.parameters()]
            opts = [v.build([{"params": list(m.parameters())}], impl) for m in (ref, r64, sharded)]
            for t in range(STEPS):
                g = torch.Generator().manual_seed(t)
                for a, b, c in zip(ref.parameters(), r64.parameters(), sharded.parameters(), strict=True):
                    grad = (torch.randn(a.shape, generator=g) * (1 + t)).to(device)
                    a.grad, b.grad = grad.clone(), grad.double()
                    c.grad = distribute_tensor(grad, c.device_mesh, c.placements)
                for o in opts:
                    o.step()
            dev, moved = rel_dev(sharded, ref, [s.float() for s in start])
            dev64, _ = rel_dev(sharded, r64, start)
            ref64, _ = rel_dev(ref, r64, start)
            out[f"optim/{name}/{impl}"] = dict(dev=dev, moved=moved, dev_vs_float64=dev64, ref_vs_float64=ref64)


def check_timing(out: dict, rank: int) -> None:
    """Median step time under FSDP2: SAM over AdamW against plain AdamW."""
    half = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    times = {}
    for label, rho in (("plain", 0.0), ("sam", 0.05)):
        model = shard(tiny_bert(num_labels=3, num_hidden_layers=4, hidden_size=64, intermediate_size=256))
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, lr=1e-3)
        sam = SAMStep.from_config(SAMConfig.resolve({"rho": 0.05}, sam_asked=True)) if rho else None
        spent = []
        for t in range(11):
            ids, labels = batches(t, 0)
            dist.barrier()
            t0 = time.perf_counter()

            def backward(ids=ids[half], labels=labels[half], model=model):
                loss = model(input_ids=ids, labels=labels).loss
                loss.backward()
                return loss

            if sam is None:
                backward()
            else:
                sam.micro_step(params, backward, t=t)
            opt.step()
            opt.zero_grad()
            spent.append(time.perf_counter() - t0)
        times[label] = sorted(spent[1:])[len(spent[1:]) // 2]  # the median of 10 (after one warm-up step)
    out["step_time"] = times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--checks", default="sam,wrapper,lora,mp,optim,timing")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--impls", default="single,foreach")
    a = ap.parse_args()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    out: dict = {"world_size": dist.get_world_size()}
    checks = a.checks.split(",")
    if "sam" in checks:
        check_sam(out, rank)
    if "wrapper" in checks:
        check_wrapper_and_resume(out, rank, a.out)
    if "lora" in checks:
        check_lora(out, rank)
    if "mp" in checks:
        check_mixed_precision(out, rank)
    if "optim" in checks:
        check_optimizers(out, [v for v in a.variants.split(",") if v], a.impls.split(","))
    if "timing" in checks:
        check_timing(out, rank)
    torch.save(out, f"{a.out}.rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
