"""Everything about the package is in pyproject.toml; this file only installs ``hf_adasam_hint.pth`` beside it.

The ``.pth`` line runs at every Python start-up and does nothing unless the command line has ``--optim``; then it
calls ``_hf_adasam_hint.install()``, which turns argparse's rejection of ``--optim adasam`` in an unmodified
Transformers script into a hint to run it through ``python -m hf_adasam`` (see ``_hf_adasam_hint.py``).
A regular install gets the file from ``build_py``; an editable install (``pip install -e .``, which ignores files that
are not modules) from the editable wheel, to which it is added with its RECORD line.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = "hf_adasam_hint.pth"
LINE = ('import sys; any(a == "--optim" or a.startswith("--optim=") for a in sys.argv[1:]) '
        'and __import__("_hf_adasam_hint").install()\n')


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            Path(self.build_lib, PTH).write_text(LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        extra = [] if self.editable_mode else [str(Path(self.build_lib, PTH))]
        return [*super().get_outputs(include_bytecode), *extra]


class EditableWheelWithPth(editable_wheel):
    def run(self) -> None:
        super().run()
        for wheel in Path(self.dist_dir).glob("*.editable-*.whl"):
            _add_to_wheel(wheel, PTH, LINE.encode())


def _add_to_wheel(wheel: Path, name: str, data: bytes) -> None:
    """Add a file at the wheel's root and its line to ``*.dist-info/RECORD`` (so ``pip uninstall`` removes it)."""
    with zipfile.ZipFile(wheel) as zf:
        entries = {info.filename: zf.read(info) for info in zf.infolist()}
    if name in entries:
        return
    record = next(n for n in entries if n.endswith(".dist-info/RECORD"))
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    entries[name] = data
    entries[record] = entries[record].rstrip(b"\n") + f"\n{name},sha256={digest},{len(data)}\n".encode()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, content in entries.items():
            zf.writestr(n, content)


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
