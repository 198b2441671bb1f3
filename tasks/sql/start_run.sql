-- Upsert: a retried flow run keeps its id, so its row is reset to running instead of failing
-- on the primary key.
insert into pipeline_runs (flow_run_id, run_date, started_at, status, records_requested)
values ($flow_run_id, $run_date, $started_at, 'running', $records_requested)
on conflict (flow_run_id) do update set
    run_date = excluded.run_date,
    started_at = excluded.started_at,
    finished_at = null,
    status = excluded.status,
    records_requested = excluded.records_requested,
    error = null
