"""Threat-model radii per data set, each with its source.

Radii are in pixel units of images in [0, 1]; L2 and L1 norms are taken over all ``C * H * W``
coordinates of one image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RADII", "ThreatRadii", "radii_for"]


@dataclass(frozen=True)
class ThreatRadii:
    """Radii of the three threat models evaluated on one data set.

    Attributes:
        dataset: data set name (a key of :data:`RADII`).
        eps_linf: Linf radius.
        eps_l2: L2 radius.
        eps_l1: L1 radius.
        source: where the numbers come from (paper, code, or calibration).
    """

    dataset: str
    eps_linf: float
    eps_l2: float
    eps_l1: float
    source: str

    def eps(self, norm: str) -> float:
        """The radius for ``norm`` in ``{"Linf", "L2", "L1"}``.

        Raises:
            ValueError: on another norm.
        """
        table = {"Linf": self.eps_linf, "L2": self.eps_l2, "L1": self.eps_l1}
        if norm not in table:
            raise ValueError(f"unknown norm {norm!r}; valid: {sorted(table)}")
        return table[norm]


_FMNIST_LINF = 0.1  # issue 4
# Calibrated L2 / L1 radii (docs/radii.md): eps_p = 0.1 * eps_50(p) / eps_50(Linf), where eps_50 is the radius
# at which the Standard LeNet-5 (seed 0) keeps half its clean accuracy; measured 1.72 (L2) and 12.08 (L1).
_FMNIST_L2 = 1.7
_FMNIST_L1 = 12.0

RADII: dict[str, ThreatRadii] = {
    "fashion_mnist": ThreatRadii(
        dataset="fashion_mnist",
        eps_linf=_FMNIST_LINF,
        eps_l2=_FMNIST_L2,
        eps_l1=_FMNIST_L1,
        source=(
            "Linf 0.1 (issue 4). L2 1.7 and L1 12: calibrated (benchmarks/calibrate_radii.py, docs/radii.md) "
            "as the radii at the same fraction of a Standard LeNet-5's median minimal adversarial "
            "perturbation as Linf 0.1 (measured 1.72 and 12.1, rounded); close to the MNIST radii "
            "(2.0, 10) of Tramer & Boneh 2019 and Maini et al. 2020"
        ),
    ),
    "cifar10": ThreatRadii(
        dataset="cifar10",
        eps_linf=8 / 255,
        eps_l2=128 / 255,
        eps_l1=2000 / 255,
        source=(
            "ADT (Dong et al. 2020) and MNG-AC (Madaan et al. 2021) Linf 8/255; MNG-AC's evaluation code "
            "(github.com/divyam3897/MNG_AC, evaluate.py) L2 128/255 and L1 2000/255"
        ),
    ),
    "digits": ThreatRadii(
        dataset="digits",
        eps_linf=_FMNIST_LINF,
        eps_l2=_FMNIST_L2 * math.sqrt(64 / 784),  # 0.486
        eps_l1=_FMNIST_L1 * 64 / 784,  # 0.980
        source=(
            "tests only: the Fashion-MNIST radii carried to 8 x 8 images (L2 scaled by sqrt(64 / 784), "
            "L1 by 64 / 784, the ratios of the norms of a constant perturbation)"
        ),
    ),
}


def radii_for(dataset: str) -> ThreatRadii:
    """The :class:`ThreatRadii` of ``dataset``.

    Raises:
        ValueError: on a data set without radii (listing :data:`RADII`).
    """
    if dataset not in RADII:
        raise ValueError(f"no threat radii for dataset {dataset!r}; valid: {sorted(RADII)}")
    return RADII[dataset]
