-- Initial schema. Applied once by tasks.storage.database.migrate, which records it in schema_migrations;
-- `if not exists` keeps a half-initialised database (e.g. created by hand) from blocking it.

create table if not exists schema_migrations (
    version integer primary key,
    name varchar,
    applied_at timestamp  -- UTC
);

-- The analytical layer: generalized, pseudonymous rows only, one batch per run_date
-- (tasks.storage.database.load_batch replaces a date's rows in one transaction). No primary key or index on
-- purpose: DuckDB's ART indexes reject a delete followed by a re-insert of the same key inside one
-- transaction, and run_date filters are served by DuckDB's min/max zone maps anyway.
create table if not exists persons_anonymized (
    person_key varchar not null,
    run_date date not null,
    gender varchar,
    age_group varchar,
    email_domain varchar,
    country varchar,
    country_code varchar,
    flow_run_id varchar
);

-- Age-group dimension: reports derive "60 or over" and the chart's full label set from the
-- bounds here instead of comparing label strings ('[90+]' does not sort or parse like the others).
-- Must match tasks.common.schemas.AGE_GROUPS (asserted by the tests).
create table if not exists age_groups (
    age_group varchar primary key,
    position integer not null,
    lower_bound integer not null,
    upper_bound integer  -- exclusive; null for the open-ended [90+]
);

insert into age_groups (age_group, position, lower_bound, upper_bound)
values
    ('[0-10]', 1, 0, 10),
    ('[10-20]', 2, 10, 20),
    ('[20-30]', 3, 20, 30),
    ('[30-40]', 4, 30, 40),
    ('[40-50]', 5, 40, 50),
    ('[50-60]', 6, 50, 60),
    ('[60-70]', 7, 60, 70),
    ('[70-80]', 8, 70, 80),
    ('[80-90]', 9, 80, 90),
    ('[90+]', 10, 90, null)
on conflict do nothing;

-- One row per flow run: status plus the per-stage timings and counts the flow reports.
create table if not exists pipeline_runs (
    flow_run_id varchar primary key,
    run_date date,
    started_at timestamp,  -- UTC
    finished_at timestamp,  -- UTC
    status varchar,
    records_requested integer,
    records_fetched integer,
    records_loaded integer,
    pages integer,
    retries integer,
    seconds_fetch double,
    seconds_mask double,
    seconds_lake double,
    seconds_generalize double,
    seconds_validate double,
    seconds_load double,
    seconds_reports double,
    seconds_total double,
    source_schema varchar,
    hash_key_id varchar,
    error varchar
);

-- Report history: one set of rows per run_date, rewritten together with that date's batch, so the
-- stored answers always match the rows in persons_anonymized.
create table if not exists report_germany_gmail_share (
    run_date date not null,
    german_users bigint,
    german_gmail_users bigint,
    gmail_share_pct double,  -- percent, rounded to 2 decimals; null when there are no German users
    flow_run_id varchar
);

create table if not exists report_top_gmail_countries (
    run_date date not null,
    rank integer,
    country varchar,
    gmail_users bigint,
    flow_run_id varchar
);

create table if not exists report_gmail_users_over_60 (
    run_date date not null,
    gmail_users_over_60 bigint,
    flow_run_id varchar
);

create table if not exists report_gmail_by_age_group (
    run_date date not null,
    age_group varchar,
    gmail_users bigint,
    flow_run_id varchar
);
