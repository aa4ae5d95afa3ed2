"""Which embedded-UNet weights a stored result was measured on, and the note a generated page carries while some of
its rows are on other weights than the current ones.

Results keyed by the model store :func:`robust_envs.diffusion.models.model_weights_id` (``"sha256:<16 hex>"``).
The embedded UNet was retrained in place on 2026-12-01 (976 -> 2,084 optimiser steps,
robust_envs/assets/ddpm_fmnist/CARD.md); a page rendered from records made before then must say so, and must stop
saying so once its rows are rerun, without anyone editing the generated file by hand. :func:`stale_weights_note`
builds that note from the stored ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

#: earlier weights of the embedded UNet, by id: what a reader needs to place them
PREVIOUS_EMBEDDED = {"sha256:9d0b0ad7adf86139": "the 976-step weights the embedded UNet had before its retrain of 2026-12-01"}
#: what a record without a weights id was measured on: the pages that render through this module started storing the
#: id before the retrain of 2026-12-01 (sigma_headroom) or with this module (sigma_tuning, whose every earlier record
#: predates the retrain), so such a record is on the 976-step weights
UNRECORDED = "not recorded (stored before results carried it, so before the retrain of 2026-12-01: the 976-step weights)"


@lru_cache(maxsize=1)
def current_embedded_weights() -> str:
    """The embedded UNet's weights id now (``"sha256:<16 hex>"``; hashed once per process, as a page asks per row)."""
    from robust_envs.diffusion.models import model_weights_id

    return model_weights_id("embedded")


def describe(weights: str | None) -> str:
    """A weights id in words: the current weights, a known earlier one, or an unrecorded one."""
    if weights is None:
        return UNRECORDED
    if weights == current_embedded_weights():
        return f"the current embedded weights (`{weights}`)"
    known = PREVIOUS_EMBEDDED.get(weights)
    return f"`{weights}` ({known})" if known else f"`{weights}`"


def short(weights: str | None) -> str:
    """A table cell for a weights id: ``current``, the 16 hex digits of another id, or ``976-step (not recorded)``."""
    if weights is None:
        return "976-step (not recorded)"
    if weights == current_embedded_weights():
        return "current"
    return weights.removeprefix("sha256:")


def stale_weights_note(weights_by_row: Mapping[str, str | None], what: str, rerun: str) -> list[str]:
    """The blockquote a generated page starts with while some of its rows are not on the current embedded weights.

    Args:
        weights_by_row: row label -> stored weights id (``None`` where the record has none).
        what: the rows' noun in the plural, e.g. ``"rows"`` or ``"records"``.
        rerun: a sentence saying how to rerun a row.

    Returns:
        ``[]`` when every row is on the current weights, else the note and a blank line.
    """
    current = current_embedded_weights()
    stale = {k: w for k, w in weights_by_row.items() if w != current}
    if not stale:
        return []
    groups: dict[str, list[str]] = {}
    for k, w in stale.items():
        groups.setdefault(describe(w), []).append(k)
    listed = "; ".join(("All" if len(keys) == len(weights_by_row) else ", ".join(f"`{k}`" for k in keys))
                       + f": {desc}" for desc, keys in groups.items())
    return [f"> **{len(stale)} of {len(weights_by_row)} {what} measured on other weights than the embedded UNet's "
            f"current ones** (`{current}`, robust_envs/assets/ddpm_fmnist/CARD.md). {listed}. Their numbers describe "
            f"those weights, not the current model. {rerun} This note is generated from the stored weights ids and "
            "goes when no such row is left.", ""]  # fmt: skip
