-- The newest run date whose batch another run committed (a run that failed after its commit
-- still committed its batch); null before the first commit.
select max(run_date) as run_date
from pipeline_runs
where flow_run_id <> $flow_run_id
    and (committed_at is not null or status in ('committed', 'completed'))
