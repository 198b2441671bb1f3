-- analytical_batch is the Arrow table registered by tasks.storage.database.load_batch: one bulk insert,
-- no rows through Python.
insert into persons_anonymized (
    person_key, run_date, gender, age_group, email_domain, country, country_code, flow_run_id
)
select
    person_key,
    run_date,
    gender,
    age_group,
    email_domain,
    country,
    country_code,
    $flow_run_id as flow_run_id
from analytical_batch
