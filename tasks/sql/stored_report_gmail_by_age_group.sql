-- Joined to the dimension only for its position: stored rows keep label order, not text order.
select r.age_group, r.gmail_users
from report_gmail_by_age_group as r
left join age_groups as g on r.age_group = g.age_group
where r.run_date = $run_date
order by g.position
