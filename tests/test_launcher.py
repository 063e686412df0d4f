"""``python -m hf_adasam``: an unmodified HfArgumentParser script that imports a module from its own folder,
run from another working directory; its card, its --help, and a bad optim_args value failing before the
model loads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hf_adasam import OPTIMIZERS, SAMConfig

ROOT = Path(__file__).resolve().parents[1]

HELPER = '''
import torch
from transformers import BertConfig, BertForSequenceClassification


def tiny_model():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                    num_attention_heads=2, intermediate_size=64,
                                                    max_position_embeddings=12, num_labels=2))


class Data(torch.utils.data.Dataset):
    def __init__(self, n=32):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(1, 64, (n, 12), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": (self.x[i, 0] >= 32).long()}
'''

SCRIPT = '''
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser, Trainer, TrainingArguments

from helper_data import Data, tiny_model  # a module beside this script, as run_qa.py imports utils_qa


@dataclass
class ScriptArguments:
    where_only: bool = field(default=False, metadata={"help": "print sys.path[0] and __file__, then stop"})


if "--where_only" in sys.argv:
    print("WHERE", sys.path[0], __file__)
    raise SystemExit(0)
script_args, args = HfArgumentParser((ScriptArguments, TrainingArguments)).parse_args_into_dataclasses()
print("MODEL LOADING", flush=True)
trainer = Trainer(model=tiny_model(), args=args, train_dataset=Data(), eval_dataset=Data(16))
trainer.train()
trainer.evaluate()
trainer.create_model_card(model_name="tiny-run")
print("RESULT", type(trainer).__name__, trainer.sam.stats.total_second_passes)
'''


@pytest.fixture
def script(tmp_path) -> Path:
    folder = tmp_path / "examples"
    folder.mkdir()
    (folder / "helper_data.py").write_text(textwrap.dedent(HELPER))
    path = folder / "train.py"
    path.write_text(textwrap.dedent(SCRIPT))
    (tmp_path / "elsewhere").mkdir()
    return path


def _run(args: list[str], cwd: Path, **env_vars: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **env_vars}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_launcher_gives_the_script_the_sys_path_of_python_script_py(script) -> None:
    rel = os.path.relpath(script, script.parent.parent / "elsewhere")
    direct = _run([rel, "--where_only"], script.parent.parent / "elsewhere")
    launched = _run(["-m", "hf_adasam", rel, "--where_only"], script.parent.parent / "elsewhere")
    assert direct.returncode == 0 and launched.returncode == 0, launched.stderr[-2000:]
    line = next(ln for ln in direct.stdout.splitlines() if ln.startswith("WHERE"))
    assert line.split()[1] == str(script.parent)
    assert next(ln for ln in launched.stdout.splitlines() if ln.startswith("WHERE")) == line


@pytest.mark.slow
def test_unmodified_script_through_launcher_trains_with_sam_and_its_card_records_it(script, tmp_path) -> None:
    from huggingface_hub import ModelCard

    out = tmp_path / "out"
    proc = _run(["-m", "hf_adasam", str(script), "--output_dir", str(out), "--optim", "adasam", "--optim_args",
                 "policy=looksam,looksam_k=2", "--max_steps", "4", "--per_device_train_batch_size", "8", "--use_cpu",
                 "--report_to", "none", "--save_strategy", "no", "--disable_tqdm", "true"], tmp_path / "elsewhere")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    assert result.split()[1:] == ["SAMTrainer", "2"]  # LookSAM k=2: SAM steps at 0 and 2
    assert "hf-adasam: SAM on: rho=0.05, adaptive=false, policy=looksam, looksam_k=2" in proc.stderr
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()["hf_adasam"]
    assert meta["optim"] == "adasam" and meta["optimizer_class"] == "hf_adasam.optim.adasam.AdaSAM"
    assert meta["sam"]["rho"] == 0.05 and meta["sam"]["policy"] == "looksam" and meta["sam"]["looksam_k"] == 2
    assert meta["sam"]["second_pass_fraction"] == 0.5
    assert "ρ = 0.05" in card.text and "`optim=adasam`" in card.text and "policy looksam" in card.text
    assert "hf-adasam" in card.data.tags and "sharpness-aware" in card.data.tags
    results = card.data.eval_results
    assert results and results[0].metric_type == "loss" and results[0].metric_value > 0


@pytest.mark.slow
def test_bad_optim_args_fail_before_the_model_loads_with_the_real_default(script, tmp_path) -> None:
    proc = _run(["-m", "hf_adasam", str(script), "--output_dir", str(tmp_path / "out"), "--optim", "adasam",
                 "--optim_args", "rho=abc", "--use_cpu"], tmp_path / "elsewhere")
    assert proc.returncode != 0 and "MODEL LOADING" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.endswith("optim_args: rho='abc' is invalid: allowed a number >= 0; "
                         "default 0.05 (ASAM 0.5) for optim=adasam"), proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()
    # as argparse reports a bad flag: one line, status 2, no traceback
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: {last.split('error: ')[-1]}"]


@pytest.mark.slow
def test_scripts_own_help_through_the_launcher_shows_the_sam_keys(script, tmp_path) -> None:
    proc = _run(["-m", "hf_adasam", str(script), "--help"], tmp_path / "elsewhere")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    for f in SAMConfig.knobs():
        assert f"--sam_{f.name}" in text
        assert f"{f.name} (default {SAMConfig.default_text(f.name)})" in text
    assert "AnyPrecisionAdamW" not in text  # Transformers' own optim_args help is replaced
    # each sam_* flag states its real default once (None means "not given" inside), booleans take no value
    flags = text.split("--sam_rho SAM_RHO, --sam-rho SAM_RHO", 1)[1]  # the sam_* options, after Trainer's own
    assert "(default: None)" not in flags and "%(default" not in flags
    assert "Default: 0.9. Also optim_args key ae_delta." in flags  # docs/algorithms.md#ae-sam: AE-SAM's δ = 0.9
    assert "Default: 5. Also optim_args key looksam_k." in flags  # LookSAM's k = 5
    assert "Default: false. Also optim_args key adaptive." in flags
    assert "--sam_adaptive [SAM_ADAPTIVE]" in text


def test_launcher_help_lists_names_knobs_with_defaults_and_examples() -> None:
    proc = _run(["-m", "hf_adasam", "--help"], ROOT)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    for name in OPTIMIZERS:
        assert any(ln.startswith(f"  {name} ") for ln in lines), name
    assert "  adashift      AdaShift: betas=0.9:0.999, eps=1e-10, n=10, phi=max" in lines
    for f in SAMConfig.knobs():
        assert any(ln.startswith(f"  {f.name}") and f"default {SAMConfig.default_text(f.name)}" in ln
                   for ln in lines), f.name
    assert "  ae_delta           default 0.9; allowed a number in [0, 1)" in lines
    assert "examples:" in lines and any("torchrun --nproc_per_node 2 -m hf_adasam" in ln for ln in lines)


PARSE_ONLY = """
from transformers import HfArgumentParser, TrainingArguments

(args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses()
print("PARSED", args.sam_adaptive, args.sam_exact_accumulation, args.sam_config.policy, args.sam_config.on)
"""


def test_knob_warning_is_one_clean_line(tmp_path) -> None:
    path = tmp_path / "parse_only.py"
    path.write_text(PARSE_ONLY)
    proc = _run(["-m", "hf_adasam", str(path), "--output_dir", str(tmp_path / "out"), "--optim", "adamw_torch",
                 "--optim_args", "policy=ae", "--sam_adaptive", "true"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PARSED True None ae False" in proc.stdout
    assert proc.stderr.strip().splitlines() == [  # no ".../arguments.py:90: UserWarning" and source line
        "hf-adasam: warning: SAM knobs policy=ae, adaptive=true have no effect: rho resolves to 0, so SAM is off "
        "(optim=adamw_torch does not turn SAM on by itself). Set rho > 0 (e.g. rho=0.05) to use them."]


def test_boolean_sam_flags_need_no_value(tmp_path) -> None:
    from transformers import HfArgumentParser

    from hf_adasam import SAMTrainingArguments

    parser = HfArgumentParser(SAMTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--optim", "adasam", "--sam_adaptive",
                                                  "--sam_sync_perturbation", "--sam_exact_accumulation", "false"])
    assert (args.sam_adaptive, args.sam_sync_perturbation, args.sam_exact_accumulation) == (True, True, False)
    assert args.sam_config.rho == 0.5  # ASAM's ρ (Kwon et al. 2021), the default once adaptive is on
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--optim", "adasam"])
    assert args.sam_adaptive is None and args.sam_config.adaptive is False and args.sam_config.rho == 0.05


@pytest.mark.slow
def test_torchrun_without_use_cpu_is_refused_while_parsing_before_the_model_loads(script, tmp_path) -> None:
    import transformers
    from packaging.version import Version

    from .test_distributed import _free_port

    if Version(transformers.__version__) < Version("5.25"):
        # checked: with 5.6.0 (CI's floor) TrainingArguments sets up the CPU process group itself under torchrun, so
        # the job trains as one 2-rank DDP job and there is nothing to refuse; 5.25.0 sees one process per rank
        pytest.skip(f"transformers {transformers.__version__}: torchrun without --use_cpu trains as DDP on the CPU")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", str(_free_port()), "-m", "hf_adasam", str(script),
                           "--output_dir", str(tmp_path / "out"), "--optim", "adasam", "--max_steps", "1",
                           "--report_to", "none"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path / "elsewhere", env=env)
    assert proc.returncode != 0 and "MODEL LOADING" not in proc.stdout, proc.stdout[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == ["error: WORLD_SIZE=2 but TrainingArguments sees one process: on CPU, torchrun needs --use_cpu "
                      "(TrainingArguments(use_cpu=True)), or every rank trains the whole job alone."], proc.stderr
    assert "exitcode  : 2" in proc.stderr  # torchrun's report: each rank exited with argparse's status


USER_MIXIN = """
import os
import sys

import torch
from transformers import HfArgumentParser, Trainer, TrainingArguments

from hf_adasam import SAMTrainerMixin
from helper_data import Data, tiny_model


class MyTrainer(SAMTrainerMixin, Trainer):  # under the launcher, Trainer already is SAM-aware
    pass


def order(cls):
    names = [c.__name__ for c in cls.__mro__]
    return f"{names.count('SAMTrainerMixin')}@{names.index('SAMTrainerMixin')}"


(args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses()
model, forwards = tiny_model(), []
model.register_forward_hook(lambda *_: forwards.append(1))
trainer = MyTrainer(model=model, args=args, train_dataset=Data())
trainer.train()
print("TRAINER", order(MyTrainer), len(forwards), trainer.sam.stats.total_second_passes, flush=True)
try:
    from trl import DPOConfig, DPOTrainer
except ImportError:
    raise SystemExit(0)
from datasets import Dataset
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM


class MyDPO(SAMTrainerMixin, DPOTrainer):
    pass


tok = AutoTokenizer.from_pretrained(os.environ["T5_TOKENIZER"])
torch.manual_seed(0)
LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)).save_pretrained(args.output_dir + "-lm")
policy = LlamaForCausalLM.from_pretrained(args.output_dir + "-lm")  # DPO builds its reference from this path
pairs = Dataset.from_dict({"prompt": [f"count {i}" for i in range(8)], "chosen": [f"{i + 1}" for i in range(8)],
                           "rejected": [f"{i - 1}" for i in range(8)]})
cfg = DPOConfig(args.output_dir + "-dpo", max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                optim="adasam", use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, max_length=16,
                bf16=False)
dpo = MyDPO(policy, None, cfg, train_dataset=pairs, processing_class=tok)
loss = dpo.train().training_loss
print("DPO", order(MyDPO), dpo.sam.stats.total_second_passes, loss == loss, flush=True)
"""


@pytest.mark.slow
def test_launcher_composes_with_a_scripts_own_mixin_class(script, tmp_path) -> None:
    path = script.parent / "own_mixin.py"
    path.write_text(USER_MIXIN)
    proc = _run(["-m", "hf_adasam", str(path), "--output_dir", str(tmp_path / "out"), "--optim", "adasam",
                 "--max_steps", "2", "--per_device_train_batch_size", "8", "--use_cpu", "--report_to", "none",
                 "--save_strategy", "no", "--disable_tqdm", "true"], tmp_path / "elsewhere",
                T5_TOKENIZER=str(ROOT.parent / "shared" / "data" / "models" / "t5-small-tokenizer"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {ln.split()[0]: ln.split()[1:] for ln in proc.stdout.splitlines() if ln.startswith(("TRAINER", "DPO"))}
    # the mixin once, right after the script's class; 2 steps x 2 passes = 4 forwards (SAM nested twice: 8)
    assert lines["TRAINER"] == ["1@1", "4", "2"], proc.stdout[-2000:]
    try:
        import trl  # noqa: F401
    except ImportError:
        return
    assert lines["DPO"] == ["1@1", "2", "True"], proc.stdout[-2000:]


def test_script_run_without_the_launcher_gets_a_two_line_hint(script, tmp_path) -> None:
    out = str(tmp_path / "out")
    proc = _run([str(script), "--output_dir", out, "--optim", "adasam", "--learning_rate", "2e-5"], tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "MODEL LOADING" not in proc.stdout, proc.stderr[-2000:]
    assert lines == [  # not argparse's 100+ lines of usage; if so: is hf_adasam_hint.pth installed (pip install -e .)?
        "train.py: error: --optim adasam is an hf-adasam optimizer, which Transformers' TrainingArguments do not know.",
        "hint: run the script through hf-adasam's launcher, which adds the names and the SAM step: "
        f"python -m hf_adasam {script} --output_dir {out} --optim adasam --learning_rate 2e-5"], proc.stderr[-3000:]
    # Transformers' own names and other mistakes keep argparse's report
    import _hf_adasam_hint

    assert _hf_adasam_hint.hint("argument --optim: invalid choice: 'adamw_torchh' (choose from ...)", []) is None
    assert _hf_adasam_hint.hint("the following arguments are required: --output_dir", []) is None


def test_a_class_naming_the_mixin_before_sam_trainer_orders_it_as_without_the_launcher() -> None:
    from hf_adasam import SAMTrainer, SAMTrainerMixin

    class Mine(SAMTrainerMixin, SAMTrainer):  # what `class Mine(SAMTrainerMixin, Trainer)` is under the launcher
        pass

    line = SAMTrainerMixin.__mro__[:-1]  # the mixin and what it builds on (object aside)
    # as `class Mine(SAMTrainerMixin, Trainer)` without the launcher: the mixin's line first, once, then the Trainers
    assert Mine.__mro__ == (Mine, *line, SAMTrainer, *(c for c in SAMTrainer.__mro__[1:] if c not in line))
