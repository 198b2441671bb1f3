-- Runs still marked running that were started by a process on this host.
select flow_run_id, pid
from pipeline_runs
where status = 'running' and host = $host and pid is not null
