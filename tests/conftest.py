import os
import warnings

# Tests are offline and use the eager kernels; the compiled path has its own (slower) tests that
# ask for impl="compiled" explicitly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_ADASAM_IMPL", "foreach")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

# The Transformers integration's tests: CI runs them again on the floor versions (`pytest -m integration`).
INTEGRATION = {"test_registry.py", "test_sam_trainer.py", "test_sam_integrations.py", "test_launcher.py",
               "test_sam_config.py", "test_integration_surface.py", "test_resume.py", "test_distributed.py",
               "test_trainer_situations.py", "test_cards.py", "test_trl.py", "test_trainer_guards.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in INTEGRATION:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def compiled_means_compiled():
    """A compiled test fails if its kernel fell back to foreach (the fallback warns; here it is an error)."""
    from hf_adasam.optim import _base

    _base._COMPILE_FAILED.clear()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*could not be compiled.*")
        yield
    assert not _base._COMPILE_FAILED, f"fell back to foreach: {_base._COMPILE_FAILED}"
