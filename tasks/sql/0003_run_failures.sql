-- Where a failed run stopped, and what changed in the source's shape, per run.
alter table pipeline_runs add column if not exists failed_stage varchar;
alter table pipeline_runs add column if not exists schema_change varchar;
