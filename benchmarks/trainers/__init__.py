"""Leaderboard training methods, all behind :class:`~benchmarks.trainers.base.Trainer`.

To add a method: write a ``Trainer`` subclass (``name``, ``paper``, ``config_cls``, ``presets``, and
``loss`` or ``train``) and add one line to :data:`TRAINERS`. The leaderboard runner reads only this dict.
"""

from __future__ import annotations

from benchmarks.trainers.adt import ADTEXPAMTrainer, ADTEXPTrainer, ADTIMPAMTrainer
from benchmarks.trainers.base import DATASET_DEFAULTS, TrainConfig, Trainer, seed_everything
from benchmarks.trainers.dverge import DVERGEAdvTTrainer, DVERGEConfig, DVERGETrainer, Ensemble
from benchmarks.trainers.methods import AdvConfig, PGDATTrainer, StandardTrainer, TRADESConfig, TRADESTrainer
from benchmarks.trainers.mng_ac import (
    AdvAvgTrainer,
    AdvMaxTrainer,
    MNGACConfig,
    MNGACTrainer,
    MSDConfig,
    MSDTrainer,
    MultiNormConfig,
)
from benchmarks.trainers.policy_loss import PolicyLossConfig, PolicyLossTrainer

__all__ = [
    "DATASET_DEFAULTS",
    "TRAINERS",
    "ADTEXPAMTrainer",
    "ADTEXPTrainer",
    "ADTIMPAMTrainer",
    "AdvAvgTrainer",
    "AdvConfig",
    "AdvMaxTrainer",
    "DVERGEAdvTTrainer",
    "DVERGEConfig",
    "DVERGETrainer",
    "Ensemble",
    "MNGACConfig",
    "MNGACTrainer",
    "MSDConfig",
    "MSDTrainer",
    "MultiNormConfig",
    "PGDATTrainer",
    "PolicyLossConfig",
    "PolicyLossTrainer",
    "StandardTrainer",
    "TRADESConfig",
    "TRADESTrainer",
    "TrainConfig",
    "Trainer",
    "get_trainer",
    "seed_everything",
]

#: Registry of methods: name -> Trainer subclass. Add new methods here.
TRAINERS: dict[str, type[Trainer]] = {
    StandardTrainer.name: StandardTrainer,
    PGDATTrainer.name: PGDATTrainer,
    TRADESTrainer.name: TRADESTrainer,
    PolicyLossTrainer.name: PolicyLossTrainer,
    DVERGETrainer.name: DVERGETrainer,
    DVERGEAdvTTrainer.name: DVERGEAdvTTrainer,
    MNGACTrainer.name: MNGACTrainer,
    AdvAvgTrainer.name: AdvAvgTrainer,
    AdvMaxTrainer.name: AdvMaxTrainer,
    MSDTrainer.name: MSDTrainer,
    ADTEXPTrainer.name: ADTEXPTrainer,
    ADTEXPAMTrainer.name: ADTEXPAMTrainer,
    ADTIMPAMTrainer.name: ADTIMPAMTrainer,
}


def get_trainer(method: str) -> type[Trainer]:
    """The Trainer class registered as ``method``.

    Raises:
        ValueError: on an unknown method (listing :data:`TRAINERS`).
    """
    if method not in TRAINERS:
        raise ValueError(f"unknown method {method!r}; valid: {sorted(TRAINERS)}")
    return TRAINERS[method]
