-- Which flow runs' rows each date holds, per table; a committed date holds exactly one.
select 'persons_anonymized' as layer, run_date, flow_run_id, count(*) as rows
from persons_anonymized
group by all
union all
select 'persons_shareable' as layer, run_date, flow_run_id, count(*) as rows
from persons_shareable
group by all
order by layer, run_date, flow_run_id
