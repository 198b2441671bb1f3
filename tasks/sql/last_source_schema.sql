-- The source schema signature of the most recent successful run (any run date).
select source_schema
from pipeline_runs
where status = 'completed' and source_schema is not null
order by finished_at desc
limit 1
