"""The torch range and the fence around torch's private internals (hf_adasam/optim/_compile.py).

- the floor pyproject.toml declares is the one the package enforces, and an older torch fails ``import hf_adasam``
  with one line naming it;
- ``import hf_adasam`` imports none of torch's private subsystems (dynamo, inductor: ~0.9 s);
- dynamo's recompile limit is raised around hf-adasam's own compiled calls only: the user's own ``torch.compile``
  after an hf-adasam step sees torch's default;
- where torch lacks a private object, the compiled impl warns and runs the foreach kernels (the same numbers), and
  RAdam runs ``torch.optim.RAdam.step``;
- DTensors are recognised by type, not by class name.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import hf_adasam
from hf_adasam import sharding
from hf_adasam._logging import HfAdasamWarning
from hf_adasam.optim import _base, _compile

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_ADASAM_IMPL", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=ROOT.parent, timeout=timeout)


def test_pyproject_declares_the_floor_the_package_enforces() -> None:
    deps = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M).group(1)
    assert re.findall(r'"torch>=([0-9.]+)"', deps) == [".".join(map(str, _compile.TORCH_FLOOR))]


def test_ci_floor_stage_installs_torchs_floor_and_runs_the_kernel_net_and_sam_trainer_tests() -> None:
    from . import conftest

    out = subprocess.run([sys.executable, str(ROOT / ".ci" / "floor_constraints.py")], capture_output=True, text=True,
                         check=True)
    assert f"torch=={'.'.join(map(str, _compile.TORCH_FLOOR))}" in out.stdout.splitlines()
    floor_stage = (ROOT / ".ci" / "run").read_text().split("python3 -m venv .venv-ci-floor", 1)[1]
    assert "floor_constraints.py > .venv-ci-floor/constraints.txt" in floor_stage
    assert "pytest -m integration" in floor_stage and "test_sam_trainer.py" in conftest.INTEGRATION
    assert "tests/test_kernel_net.py" in floor_stage.split("--trl", 1)[0]


def test_an_older_torch_fails_the_import_with_one_line_naming_the_floor() -> None:
    out = _python("""
        import torch
        torch.__version__ = "2.6.0+cu124"
        import hf_adasam
    """)
    assert out.returncode != 0
    floor = ".".join(map(str, _compile.TORCH_FLOOR))
    last = out.stderr.strip().splitlines()[-1]
    want = f"hf-adasam needs torch>={floor}; this is torch 2.6.0+cu124 (pip install 'torch>={floor}')"
    assert last == f"ImportError: {want}"


def test_the_floor_itself_and_newer_pass(monkeypatch) -> None:
    floor = ".".join(map(str, _compile.TORCH_FLOOR))
    for version in (floor, floor + "+cu126", "2.8.0", "2.10.0", "2.13.0+cpu", "3.0.0"):
        monkeypatch.setattr(torch, "__version__", version)
        _compile.require_torch_floor()
    for version in ("2.6.0", "2.7.0", "1.13.1"):
        monkeypatch.setattr(torch, "__version__", version)
        with pytest.raises(ImportError, match=rf"^hf-adasam needs torch>={floor}; this is torch {version}"):
            _compile.require_torch_floor()


def test_import_loads_no_private_torch_subsystem() -> None:
    out = _python("""
        import sys, torch
        before = set(sys.modules)
        import hf_adasam
        new = sorted(m for m in set(sys.modules) - before
                     if m.startswith(("torch._dynamo", "torch._inductor", "torch.fx.experimental._config",
                                      "torch.distributed.tensor", "transformers")))
        print(new)
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_users_own_compile_after_a_compiled_step_sees_torchs_recompile_limit() -> None:
    """After hf-adasam's compiled kernels ran, a user's function still recompiles at most dynamo's default number of
    times (8) before dynamo gives up on it: hf-adasam's limit (64) holds around its own calls only."""
    out = _python("""
        import torch, torch._dynamo
        from hf_adasam import AdaSAM
        from hf_adasam.optim import _compile
        name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
        default = getattr(torch._dynamo.config, name)
        p = torch.nn.Parameter(torch.ones(3))
        opt = AdaSAM([p], lr=0.1, impl="compiled")
        p.grad = torch.ones(3)
        opt.step()
        assert not torch.equal(p.detach(), torch.ones(3))
        with _compile.compile_settings(torch.device("cpu")):
            inside = getattr(torch._dynamo.config, name)
        after = getattr(torch._dynamo.config, name)
        graphs = []
        def backend(gm, inputs):
            graphs.append(gm)
            return gm.forward
        f = torch.compile(lambda x, k: x + k, backend=backend, dynamic=False)
        for k in range(12):  # each int is a new specialisation: a recompile each, until the limit
            f(torch.ones(2), k)
        print(default, inside, after, len(graphs))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    default, inside, after, graphs = map(int, out.stdout.split())
    assert default == 8  # torch's default, as this test assumes
    assert inside == _compile.RECOMPILE_LIMIT
    assert after == default
    assert graphs == default


def test_a_higher_limit_set_by_the_user_is_kept_inside_our_calls() -> None:
    s = _compile._settings()
    # (config.patch, not monkeypatch: undoing a monkeypatch.setattr hides a torch config entry for good)
    with s.dynamo_config.patch({s.recompile_limit: 1000}):
        with _compile.compile_settings(torch.device("cpu")):
            assert getattr(s.dynamo_config, s.recompile_limit) == 1000
        assert getattr(s.dynamo_config, s.recompile_limit) == 1000


# ----------------------------------------------------------------------------------------------
# torch without one of the private objects: warn, run the foreach kernels
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_lookups():
    """The lookups are cached per process: clear them before the test breaks one, and after it is restored."""

    def clear() -> None:
        _compile._settings.cache_clear()
        _compile.compile_unavailable.cache_clear()
        _compile.radam_internals.cache_clear()
        _compile._SAID.clear()
        _base._COMPILE_FAILED.clear()

    clear()
    yield
    clear()


def _steps(build, steps: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    grads = [[torch.randn_like(p) for p in params] for _ in range(steps)]
    opt = build(params)
    for gs in grads:
        for p, g in zip(params, gs, strict=True):
            p.grad = g
        opt.step()
    return [p.detach().clone() for p in params]


def _assert_equal(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)


@pytest.mark.usefixtures("fresh_lookups")
def test_without_dynamos_recompile_limit_the_compiled_impl_warns_and_runs_foreach(monkeypatch) -> None:
    monkeypatch.setattr(_compile, "RECOMPILE_LIMIT_NAMES", ("no_such_limit",))
    want = _steps(lambda ps: hf_adasam.AdaSAM(ps, lr=0.1, impl="foreach"))
    with pytest.warns(HfAdasamWarning, match=r"has no torch\._dynamo\.config\.no_such_limit \(checked with torch "):
        got = _steps(lambda ps: hf_adasam.AdaSAM(ps, lr=0.1, impl="compiled"))
    _assert_equal(got, want)


@pytest.mark.usefixtures("fresh_lookups")
def test_without_the_arena_storage_function_the_functional_kernel_warns_and_runs_foreach(monkeypatch) -> None:
    """The functional API called with impl="compiled" directly (no constructor to resolve the impl)."""
    from hf_adasam.optim.adasam import adasam

    monkeypatch.delattr(torch._C, "_construct_storage_from_data_pointer")

    def run(impl: str) -> list[torch.Tensor]:
        torch.manual_seed(0)
        p, g, m, v, vmax = (torch.randn(4, 3) for _ in range(5))
        v, vmax = v.abs(), vmax.abs()
        adasam([p], [g], [m], [v], [vmax], lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.01, step_size=0.1,
               bias_correction2_sqrt=1.0, impl=impl)
        return [p, m, v, vmax]

    want = run("foreach")
    with pytest.warns(RuntimeWarning, match=r"could not be compiled .*_construct_storage_from_data_pointer.*foreach"):
        got = run("compiled")
    _assert_equal(got, want)


@pytest.mark.usefixtures("fresh_lookups")
def test_without_torchs_radam_kernels_radam_warns_and_runs_torchs_own_step(monkeypatch) -> None:
    monkeypatch.setattr(_compile, "_RADAM_KWARGS", {*_compile._RADAM_KWARGS, "a_keyword_torch_dropped"})
    want = _steps(lambda ps: torch.optim.RAdam(ps, lr=0.1, foreach=True))
    with pytest.warns(HfAdasamWarning, match=r"_single_tensor_radam\(a_keyword_torch_dropped=\.\.\.\).*"
                                             r"torch\.optim\.RAdam\.step itself"):
        got = _steps(lambda ps: hf_adasam.RAdam(ps, lr=0.1, impl="foreach", foreach=True))
    _assert_equal(got, want)


@pytest.mark.usefixtures("fresh_lookups")
def test_the_graph_capture_check_under_its_older_name_and_none() -> None:
    class Old:
        ran = False

        def _cuda_graph_capture_health_check(self) -> None:
            Old.ran = True

    _compile.graph_capture_health_check(Old())
    assert Old.ran
    with pytest.warns(HfAdasamWarning, match="skips the check that capturable matches a CUDA-graph capture"):
        _compile.graph_capture_health_check(object())
    with warnings.catch_warnings():  # said once
        warnings.simplefilter("error")
        _compile.graph_capture_health_check(object())


# ----------------------------------------------------------------------------------------------
# DTensor by type
# ----------------------------------------------------------------------------------------------
def test_a_class_merely_named_dtensor_is_not_sharded() -> None:
    class DTensor(torch.Tensor):
        device_mesh = None

        def to_local(self) -> torch.Tensor:
            return self

    assert not sharding.is_sharded(torch.zeros(2).as_subclass(DTensor))
    assert not sharding.is_sharded(torch.zeros(2))


def test_a_real_dtensor_is_sharded() -> None:
    out = _python("""
        import os, torch, torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor
        from hf_adasam.sharding import is_sharded, local
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
        dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
        mesh = init_device_mesh("cpu", (1,))
        d = distribute_tensor(torch.arange(4.0), mesh, [Shard(0)])
        print("result:", is_sharded(d), is_sharded(local(d)), type(local(d)).__name__)
        dist.destroy_process_group()
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("result:")]  # (gloo prints to stdout too)
    assert line.split()[1:] == ["True", "False", "Tensor"]
