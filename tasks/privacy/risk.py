"""Re-identification risk of a table on its quasi-identifiers (prosecutor model), l-diversity.

Vectorized: Arrow's group-by counts the equivalence classes, Python never loops over records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_K = 5
QUASI_IDENTIFIERS: tuple[str, ...] = ("age_group", "gender", "country", "email_domain")
L_DIVERSITY_CLASSES: tuple[str, ...] = ("age_group", "gender", "country")


@dataclass(frozen=True)
class RiskMetrics:
    """Re-identification risk of a table on its quasi-identifiers (prosecutor model)."""

    quasi_identifiers: tuple[str, ...]
    k: int
    records: int
    classes: int
    k_min: int  # smallest equivalence class; 0 for an empty table
    records_below_k: int
    share_below_k: float
    prosecutor_risk_max: float  # 1 / k_min
    prosecutor_risk_avg: float  # mean over records of 1 / class size (= classes / records)
    l_diversity_min: int  # fewest distinct sensitive values in an l-class
    l_diversity_avg: float  # mean over l-classes

    def as_run_columns(self, prefix: str = "") -> dict[str, Any]:
        """The figures as pipeline_runs columns (optionally prefixed, e.g. `extract_`)."""
        return {
            f"{prefix}k_min": self.k_min,
            f"{prefix}equivalence_classes": self.classes,
            f"{prefix}records_below_k": self.records_below_k,
            f"{prefix}share_below_k": self.share_below_k,
            f"{prefix}prosecutor_risk_max": self.prosecutor_risk_max,
            f"{prefix}prosecutor_risk_avg": self.prosecutor_risk_avg,
            f"{prefix}l_diversity_min": self.l_diversity_min,
            f"{prefix}l_diversity_avg": self.l_diversity_avg,
        }


def _class_sizes(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    grouped = table.select(list(columns)).group_by(list(columns)).aggregate([([], "count_all")])
    return np.asarray(grouped["count_all"].to_numpy())


def risk_metrics(
    table: pa.Table,
    quasi_identifiers: Sequence[str] = QUASI_IDENTIFIERS,
    k: int = DEFAULT_K,
    sensitive: str = "email_domain",
    l_classes: Sequence[str] = L_DIVERSITY_CLASSES,
) -> RiskMetrics:
    """k_min, records below k, prosecutor risk and l-diversity of `sensitive` within l_classes."""
    qis = tuple(quasi_identifiers)
    if missing := sorted((set(qis) | set(l_classes) | {sensitive}) - set(table.column_names)):
        raise ValueError(f"table lacks columns {missing}")
    n = table.num_rows
    if n == 0:
        return RiskMetrics(qis, k, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0, 0.0)
    sizes = _class_sizes(table, qis)
    below = int(sizes[sizes < k].sum())
    k_min = int(sizes.min())
    # Nulls are not a sensitive value an attacker learns, so only valid values count.
    diverse = (
        table.select([*l_classes, sensitive])
        .group_by(list(l_classes))
        .aggregate([(sensitive, "count_distinct", pc.CountOptions(mode="only_valid"))])
    )[f"{sensitive}_count_distinct"].to_numpy()
    return RiskMetrics(
        quasi_identifiers=qis,
        k=k,
        records=n,
        classes=len(sizes),
        k_min=k_min,
        records_below_k=below,
        share_below_k=below / n,
        prosecutor_risk_max=1.0 / k_min,
        # Each class contributes size * (1 / size) = 1, so the mean over records is classes / n.
        prosecutor_risk_avg=len(sizes) / n,
        l_diversity_min=int(diverse.min()),
        l_diversity_avg=float(diverse.mean()),
    )
