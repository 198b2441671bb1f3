-- Report 3: Gmail users aged 60 or over. Only age groups are stored, so "60 or over" means every
-- group whose lower bound is >= 60, taken from the age_groups dimension rather than from the
-- label text ('[90+]' would break string comparisons). Always exactly one row.
with groups_over_60 as (
    select age_group
    from age_groups
    where lower_bound >= 60
)

select count(*) as gmail_users_over_60
from persons_anonymized as p
inner join groups_over_60 as g on p.age_group = g.age_group
where p.run_date = $run_date
  and p.email_domain = 'gmail.com'
