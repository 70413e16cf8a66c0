"""Console scripts (hydra mains)."""

from pathlib import Path

# Hydra configs live in the repository's top-level configs/ (the design card's layout);
# the package is installed editable, so they are found beside it.
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def refuse_targets(cfg) -> None:
    """Configs choose classes by name from fixed registries (policies, guides, tasks);
    nothing is instantiated from a `_target_` path, so a config from elsewhere cannot
    import arbitrary code. A `_target_` key is an error, not silently ignored."""
    from omegaconf import OmegaConf

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            if "_target_" in node:
                raise ValueError(
                    f"config key {where}._target_ is not allowed: ddn-policy instantiates "
                    "only its own classes, chosen by name (e.g. policy=ddn|diffusion|mse)"
                )
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")

    walk(OmegaConf.to_container(cfg, resolve=False), "cfg")
