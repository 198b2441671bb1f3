-- The source schema signature of the most recent run whose batch was committed (any run date).
select source_schema
from pipeline_runs
where (committed_at is not null or status = 'completed') and source_schema is not null
order by coalesce(committed_at, finished_at) desc
limit 1
