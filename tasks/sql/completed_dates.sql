-- Run dates in a range that already hold a loaded batch from a completed run.
with loaded as (
    select distinct run_date from persons_anonymized
    where run_date between $start_date and $end_date
)
select loaded.run_date
from loaded
where exists (
    select 1 from pipeline_runs as runs
    where runs.run_date = loaded.run_date and runs.status = 'completed'
)
order by loaded.run_date
