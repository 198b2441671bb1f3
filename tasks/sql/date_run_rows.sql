-- Rows of one run date per flow run, in the analytical table and in the shareable extract.
select 'persons_anonymized' as layer, flow_run_id, count(*) as rows
from persons_anonymized
where run_date = $run_date
group by all
union all
select 'persons_shareable' as layer, flow_run_id, count(*) as rows
from persons_shareable
where run_date = $run_date
group by all
order by layer, flow_run_id
