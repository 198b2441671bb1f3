-- Gmail users per age group, for the report chart. Starts from the age_groups dimension so every
-- group appears (with 0 when empty) and the bars come out in label order, not alphabetical order.
with gmail_users as (
    select
        age_group,
        count(*) as gmail_users
    from persons_anonymized
    where run_date = $run_date
      and email_domain = 'gmail.com'
    group by age_group
)

select
    g.age_group,
    coalesce(u.gmail_users, 0) as gmail_users
from age_groups as g
left join gmail_users as u on g.age_group = u.age_group
order by g.position
