select count(*) as rows_loaded
from persons_shareable
where run_date = $run_date
