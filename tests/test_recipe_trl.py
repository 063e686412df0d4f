"""recipes/trl/sft_lora.py at a tiny budget: its own config file, then LoRA SFT with SAM on Multi30k's captions."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
MULTI30K = ROOT.parent / "shared" / "data" / "translation" / "multi30k"
CONFIG = ROOT / "recipes" / "trl" / "configs" / "multi30k_en_sft_lora_adasam.json"


def _load():
    spec = importlib.util.spec_from_file_location("sft_lora", ROOT / "recipes" / "trl" / "sft_lora.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sft_lora"] = module  # training_args.bin pickles the recipe's config class by this name
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
@pytest.mark.skipif(not MULTI30K.is_dir(), reason="needs ../shared/data/translation/multi30k")
def test_sft_lora_recipe_trains_with_sam_and_writes_adapters_and_card(tmp_path, monkeypatch) -> None:
    from huggingface_hub import ModelCard

    monkeypatch.chdir(ROOT)  # the config's data paths are relative to the repository, as the README runs it
    out = tmp_path / "run"
    metrics = _load().main([str(CONFIG), "--max_train_samples", "64", "--max_eval_samples", "16", "--hidden_size",
                            "32", "--max_steps", "4", "--logging_steps", "1", "--use_cpu", "true", "--disable_tqdm",
                            "true", "--output_dir", str(out)])
    assert math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] < metrics["eval_loss_before_training"]
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert (out / "adapter_model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    card = ModelCard.load(out / "README.md")
    assert card.data.hf_adasam["sam"]["rho"] == 0.05 and card.data.hf_adasam["optim"] == "adasam"
    assert {r.metric_type for r in card.data.eval_results} == {"loss", "perplexity"}
