"""The integration's surface: a light ``import hf_adasam``, private Transformers names that fail loudly when
they move, the card template shipped as package data, and cards from a plain SAMTrainer run."""

from __future__ import annotations

import importlib.resources
import subprocess
import sys
from pathlib import Path

import pytest

import hf_adasam
from hf_adasam.transformers_integration import _internals

from ._tiny import TokenDataset, tiny_bert

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"import sys; {code}; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


def test_import_hf_adasam_loads_no_transformers_and_register_no_trainer() -> None:
    mods = _modules_after("import hf_adasam; hf_adasam.SAM, hf_adasam.AdaSAM, hf_adasam.create_optimizer")
    assert "torch" in mods and not any(m == "transformers" or m.startswith("transformers.") for m in mods)
    mods = _modules_after("import hf_adasam; hf_adasam.register()")
    assert "transformers.training_args" in mods and "transformers.trainer" not in mods


def test_a_moved_private_name_fails_loudly_naming_it_and_the_versions_checked(monkeypatch) -> None:
    from transformers import trainer_optimizer

    monkeypatch.delattr(trainer_optimizer, "_OPTIMIZER_HANDLERS")
    with pytest.raises(RuntimeError) as err:
        hf_adasam.register()
    msg = str(err.value)
    assert "transformers.trainer_optimizer._OPTIMIZER_HANDLERS" in msg and _internals.CHECKED in msg
    assert "hf_adasam.SAMTrainer" in msg


def test_private_names_live_in_one_module() -> None:
    pkg = ROOT / "hf_adasam"
    private = ("_OPTIMIZER_HANDLERS", "_value2member_map_", "_member_map_", "_parse_optim_args",
               "_save_optimizer_and_scheduler", "_load_optimizer_and_scheduler", "_prepare_inputs", "DEFAULT_CALLBACKS")
    users = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*.py") for name in private if name in p.read_text()}
    assert users == {"transformers_integration/_internals.py"}


def test_card_template_is_package_data() -> None:
    template = importlib.resources.files("hf_adasam.transformers_integration") / "model_card_template.md"
    assert template.is_file() and "{{ card_data }}" in template.read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]\nhf_adasam = ["transformers_integration/*.md"]' in pyproject


@pytest.mark.parametrize(("optim", "rho", "text"), [("adasam", 0.05, "ρ = 0.05"), ("adamw_torch", 0.0, "off (ρ = 0)")])
def test_create_model_card_of_a_plain_run_adds_the_optimizer_section(optim, rho, text, tmp_path) -> None:
    from huggingface_hub import ModelCard

    args = hf_adasam.SAMTrainingArguments(output_dir=str(tmp_path), optim=optim, max_steps=2,
                                          per_device_train_batch_size=8, use_cpu=True, report_to=[],
                                          save_strategy="no", disable_tqdm=True)
    trainer = hf_adasam.SAMTrainer(model=tiny_bert(), args=args, train_dataset=TokenDataset())
    trainer.train()
    trainer.create_model_card(model_name="tiny")
    card = ModelCard.load(tmp_path / "README.md")
    meta = card.data.to_dict()["hf_adasam"]
    assert meta["optim"] == optim and meta["sam"]["rho"] == rho
    assert set(meta["sam"]) >= set(hf_adasam.SAMConfig.__dataclass_fields__)
    assert text in card.text
    assert "This model was trained" in card.text or "Training procedure" in card.text  # Transformers' card kept
