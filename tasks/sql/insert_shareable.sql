-- shareable_batch is the Arrow table registered by tasks.privacy.extract.load_shareable.
insert into persons_shareable (run_date, gender, age_group, region, email_domain, flow_run_id)
select
    $run_date::date as run_date,
    gender,
    age_group,
    region,
    email_domain,
    $flow_run_id as flow_run_id
from shareable_batch
