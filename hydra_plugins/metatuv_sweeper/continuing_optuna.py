"""``hydra/sweeper=metatuv_optuna``: hydra-optuna-sweeper 1.3 that continues a stored study on rerun.

The stock sweeper (1.3.0) loads an existing study from ``storage`` but numbers its jobs from 0 again and builds its
sampler with the configured seed, so a rerun proposes the same first points as the run before (duplicates) into
the old job folders 0, 1, … (where the app finds another config's checkpoint). Here, before the stock sweep runs,
the study's trials are counted (``n``): the jobs are numbered from ``n`` (job folder = trial number, new folders
only) and the sampler is built with seed ``seed + n`` (new points, still reproducible). Everything else is the
stock sweeper's.
"""

import logging
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import instantiate
from omegaconf import OmegaConf

try:  # hydra-optuna-sweeper is optional (requirements-dev.txt); without it this plugin is simply absent
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # pragma: no cover
    OptunaSweeper = None

log = logging.getLogger(__name__)


def stored_trials(storage: Any, study_name: str | None) -> int:
    """Number of trials (any state) of ``study_name`` in ``storage``; 0 without a storage, a name or the study."""
    if storage is None or not study_name:
        return 0
    import optuna  # imported when sweeping only (Hydra imports every plugin module at each start)

    try:
        return len(optuna.load_study(study_name=study_name, storage=storage).trials)
    except KeyError:  # optuna 2.x: no study of that name yet
        return 0


if OptunaSweeper is not None:

    class ContinuingOptunaSweeper(OptunaSweeper):
        """The stock Optuna sweeper, continuing a stored study: job numbers and the sampler's seed start past its
        existing trials."""

        def __init__(self, sampler: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(None, *args, **kwargs)  # the sampler is built in sweep(), once the study is known
            self.sampler_config = sampler

        def sweep(self, arguments: list[str]) -> None:
            impl = self.sweeper
            done = stored_trials(impl.storage, impl.study_name)
            config = OmegaConf.to_container(OmegaConf.create(self.sampler_config), resolve=True)
            if done and config.get("seed") is not None:
                config["seed"] = int(config["seed"]) + done  # new points, not the previous run's again
            impl.sampler = instantiate(config)
            impl.job_idx = done  # job folder N holds trial N
            if done:
                log.info(f"Continuing study {impl.study_name}: {done} trials stored; jobs and seed start at {done}")
            return impl.sweep(arguments)

    @dataclass
    class ContinuingOptunaSweeperConf(OptunaSweeperConf):
        _target_: str = "hydra_plugins.metatuv_sweeper.continuing_optuna.ContinuingOptunaSweeper"
        _recursive_: bool = False  # the sampler config reaches __init__ as config (built in sweep())

    ConfigStore.instance().store(
        group="hydra/sweeper", name="metatuv_optuna", node=ContinuingOptunaSweeperConf, provider="metatuv"
    )
