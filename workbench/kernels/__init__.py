"""The Triton kernels and their PyTorch references, imported as `workbench.kernels.<name>`.

The sources live in the top-level `kernels/` folder (the design card's layout). This package only points
its import path there, so they are never importable as a top-level `kernels` module (a name PyPI's
hub-kernels package owns).
"""

from pathlib import Path

__path__ = [str(Path(__file__).resolve().parents[2] / "kernels")]
