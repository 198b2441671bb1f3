-- A run whose process is gone without finishing (killed, or the machine went down).
update pipeline_runs
set status = 'abandoned',
    error = 'the run''s process ended without finishing (killed or crashed)'
where flow_run_id = $flow_run_id and status = 'running'
