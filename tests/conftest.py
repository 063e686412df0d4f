import os

# Tests are offline and use the eager kernels; the compiled path has its own (slower) tests that
# ask for impl="compiled" explicitly.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("HF_ADASAM_IMPL", "foreach")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
