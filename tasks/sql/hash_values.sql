-- 64-bit hashes of the strings registered as `leak_values` (column v), in input order: the leak
-- scan keeps these instead of the raw values. DuckDB's hash() has no per-process seed, so hashes
-- built in a mask task (or a Dask worker) and probed in the flow agree.
select hash(v) as h
from leak_values
