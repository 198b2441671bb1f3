-- Report 3: Gmail users aged 60 or over ($older_age, tasks.common.schemas.OLDER_AGE). Only age groups
-- are stored, so "60 or over" means every group whose lower bound is >= $older_age, taken from the
-- age_groups dimension rather than from the label text ('[90+]' would break string comparisons).
-- Always exactly one row.
with older_groups as (
    select age_group
    from age_groups
    where lower_bound >= $older_age
)

select count(*) as gmail_users_over_60
from persons_anonymized as p
inner join older_groups as g on p.age_group = g.age_group
where p.run_date = $run_date
  and p.email_domain = 'gmail.com'
