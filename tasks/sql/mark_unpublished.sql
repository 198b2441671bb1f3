-- A run whose process ended after its commit but before its artifacts were published: its
-- batch is in place, its reports are not in the Prefect UI.
update pipeline_runs
set status = 'failed',
    failed_stage = 'publish',
    error = 'the run''s process ended after its commit, before its artifacts were published'
where flow_run_id = $flow_run_id and status = 'committed'
