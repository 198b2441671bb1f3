"""Arrow schemas of the datasets the stages hand to each other (the contracts between modules)."""

from __future__ import annotations

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

AGE_GROUPS = (
    "[0-10]",
    "[10-20]",
    "[20-30]",
    "[30-40]",
    "[40-50]",
    "[50-60]",
    "[60-70]",
    "[70-80]",
    "[80-90]",
    "[90+]",
)

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
