-- Privacy figures per run (issue 5) and the k-anonymous shareable extract.
-- `add column if not exists` keeps the migration safe on a database where a column was added by
-- hand; DuckDB 2.0 accepts it on pipeline_runs despite its primary key.

-- Re-identification risk of the analytical batch (after the rare-domain collapse), on the
-- quasi-identifiers recorded in risk_quasi_identifiers.
alter table pipeline_runs add column if not exists privacy_k integer;
alter table pipeline_runs add column if not exists risk_quasi_identifiers varchar;
alter table pipeline_runs add column if not exists k_min integer;
alter table pipeline_runs add column if not exists equivalence_classes integer;
alter table pipeline_runs add column if not exists records_below_k integer;
alter table pipeline_runs add column if not exists share_below_k double;
alter table pipeline_runs add column if not exists prosecutor_risk_max double;
alter table pipeline_runs add column if not exists prosecutor_risk_avg double;
alter table pipeline_runs add column if not exists l_diversity_min integer;
alter table pipeline_runs add column if not exists l_diversity_avg double;
-- Email domains with fewer than k users that became 'other', and the rows that changed.
alter table pipeline_runs add column if not exists domains_collapsed integer;
alter table pipeline_runs add column if not exists records_domain_collapsed integer;
-- The shareable extract: its k_min, the generalization steps chosen, local suppression.
alter table pipeline_runs add column if not exists extract_k_min integer;
alter table pipeline_runs add column if not exists extract_records integer;
alter table pipeline_runs add column if not exists extract_suppressed_cells integer;
alter table pipeline_runs add column if not exists extract_records_removed integer;
alter table pipeline_runs add column if not exists extract_steps varchar;
-- The leak scan of everything the run wrote: how many outputs, how many hit cells/lines, and
-- where ("output:field" list, never a value).
alter table pipeline_runs add column if not exists leak_outputs_scanned integer;
alter table pipeline_runs add column if not exists leak_hits integer;
alter table pipeline_runs add column if not exists leak_hit_fields varchar;
alter table pipeline_runs add column if not exists seconds_privacy double;

-- The k-anonymous extract: one batch per run_date (rewritten with the date's rerun, like
-- persons_anonymized). No person_key and no row order taken from the source: a row cannot be
-- tied back to the analytical or raw layers. Every quasi-identifier is generalized per the
-- run's steps (pipeline_runs.extract_steps) and may be '*' where locally suppressed.
create table if not exists persons_shareable (
    run_date date not null,
    gender varchar,
    age_group varchar,
    region varchar,  -- country, sub-region or continent, as extract_steps says
    email_domain varchar,
    flow_run_id varchar
);
