-- Wall seconds of the leak-scan stage, beside the other per-stage timings.
alter table pipeline_runs add column if not exists seconds_leak_scan double;
