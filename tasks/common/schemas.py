"""Arrow schemas of the datasets the steps hand to each other (the contracts between modules)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import pyarrow as pa

MASK = "****"

# A column as Arrow hands it over: one array, or chunks of one.
ArrayLike: TypeAlias = pa.Array | pa.ChunkedArray

# Masked raw batch: what `tasks.ingest.mask` produces and `tasks.storage.lake` writes to
# data_lake/raw/YYYY/MM/DD/persons.parquet. Field names follow the source (flattened address);
# every direct identifier is replaced by MASK, the birthday by the age at the run date.
RAW_SCHEMA = pa.schema(
    [
        pa.field("person_key", pa.string(), nullable=False),
        pa.field("run_date", pa.date32(), nullable=False),
        pa.field("firstname", pa.string()),
        pa.field("lastname", pa.string()),
        pa.field("email", pa.string()),  # "****@domain" as served; "****" when there is no "@"
        pa.field("phone", pa.string()),
        pa.field("age", pa.int16()),  # whole years at run_date; the exact birthday is never stored
        pa.field("gender", pa.string()),
        pa.field("street", pa.string()),
        pa.field("street_name", pa.string()),
        pa.field("building_number", pa.string()),
        pa.field("city", pa.string()),
        pa.field("zipcode", pa.string()),
        pa.field("country", pa.string()),
        pa.field("country_code", pa.string()),
        pa.field("latitude", pa.string()),
        pa.field("longitude", pa.string()),
        pa.field("website", pa.string()),
        pa.field("image", pa.string()),
    ]
)

# Columns of the raw batch that must equal MASK exactly.
MASKED_COLUMNS = (
    "firstname",
    "lastname",
    "phone",
    "street",
    "street_name",
    "building_number",
    "city",
    "zipcode",
    "latitude",
    "longitude",
    "website",
    "image",
)


@dataclass(frozen=True)
class AgeBand:
    """One age group of the analytical layer: ages lower..upper-1 in whole years."""

    lower: int
    upper: int | None  # exclusive; None for the open-ended last band

    @property
    def label(self) -> str:
        """How the analytical layer writes the group: `[lower-upper]`, or `[lower+]` when open."""
        return f"[{self.lower}+]" if self.upper is None else f"[{self.lower}-{self.upper}]"


# The age groups (design.md): 10-year bands from 0, then one open band. The GX suite
# (expectations/analytical_persons.json) and the age_groups table (0001_init.sql) hold the same
# bands; tests assert both equal these.
AGE_BAND_YEARS = 10
_OPEN_BAND_FROM = 90
AGE_BANDS: tuple[AgeBand, ...] = (
    *(
        AgeBand(lower, lower + AGE_BAND_YEARS)
        for lower in range(0, _OPEN_BAND_FROM, AGE_BAND_YEARS)
    ),
    AgeBand(_OPEN_BAND_FROM, None),
)
AGE_GROUPS: tuple[str, ...] = tuple(band.label for band in AGE_BANDS)

# "Aged 60 or over" in the reports: every band whose lower bound is at least this (SQL binds it
# as $older_age, see tasks.common.reports.REPORT_VALUES).
OLDER_AGE = 60


def age_band(label: str) -> AgeBand:
    """The age band of a label; ValueError for a label that is none."""
    for band in AGE_BANDS:
        if band.label == label:
            return band
    raise ValueError(f"unexpected age group label {label!r}")


# Analytical batch: what `tasks.privacy.generalize` produces and `tasks.storage.database` writes
# to persons_anonymized.
ANALYTICAL_SCHEMA = pa.schema(
    [
        pa.field("person_key", pa.string(), nullable=False),
        pa.field("run_date", pa.date32(), nullable=False),
        pa.field("gender", pa.string()),
        pa.field("age_group", pa.string()),
        pa.field("email_domain", pa.string()),
        pa.field("country", pa.string()),
        pa.field("country_code", pa.string()),
    ]
)
