-- The commit point: when a run's outputs were committed, and what a failed run left for its
-- date, read back from disk after the failure (flow run ids and a path, never values).
alter table pipeline_runs add column if not exists committed_at timestamp;  -- UTC
alter table pipeline_runs add column if not exists kept_lake_run varchar;
alter table pipeline_runs add column if not exists kept_db_run varchar;
alter table pipeline_runs add column if not exists kept_extract_run varchar;
alter table pipeline_runs add column if not exists kept_quarantine varchar;
-- Seconds of the stages that verify, commit and publish what a run staged.
alter table pipeline_runs add column if not exists seconds_verify double;
alter table pipeline_runs add column if not exists seconds_commit double;
alter table pipeline_runs add column if not exists seconds_publish double;
