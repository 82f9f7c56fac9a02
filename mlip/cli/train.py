"""`mlip-train`: train a potential from the Hydra configs shipped in the package, ``mlip/configs/``.

    mlip-train experiment=sample                    # the README's quick start
    mlip-train model/backbone=mace trainer.max_epochs=5 name=try1
    mlip-train -m optimizer.lr=0.01,0.005           # multirun sweep
    mlip-train name=try1                            # again: resumes runs/try1 (resume=auto)

See docs/training.md for the config groups and outputs.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mlip.train.build import config_dir, register_resolvers, train


def run(config: DictConfig) -> None:
    train(config, HydraConfig.get().runtime.output_dir)


def main() -> None:
    register_resolvers()
    # hydra.main needs the directory at decoration time; it is absolute, so it works from any cwd
    hydra_main = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")(run)
    hydra_main()


if __name__ == "__main__":
    sys.exit(main())
