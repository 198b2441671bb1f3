-- Which process runs a flow run, so a later run can tell a crashed run from a live one.
alter table pipeline_runs add column if not exists host varchar;
alter table pipeline_runs add column if not exists pid integer;
