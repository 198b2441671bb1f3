-- Runs that have not finished: still running, or committed but not yet published.
select flow_run_id, run_date, status, host, pid
from pipeline_runs
where status in ('running', 'committed')
