"""``python -m hf_adasam script.py ...``: see :mod:`hf_adasam.transformers_integration.launcher`."""

from .transformers_integration.launcher import main

if __name__ == "__main__":
    main()
