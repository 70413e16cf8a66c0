"""Console scripts (hydra mains)."""

from pathlib import Path

# Hydra configs live in the repository's top-level configs/ (the design card's layout);
# the package is installed editable, so they are found beside it.
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
