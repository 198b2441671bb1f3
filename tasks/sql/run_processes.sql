-- The process each of these flow runs recorded, so a check can tell whether it is gone.
select flow_run_id, run_date, started_at, host, pid
from pipeline_runs
where list_contains($flow_run_ids, flow_run_id)
