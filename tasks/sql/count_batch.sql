select count(*) as rows_loaded
from persons_anonymized
where run_date = $run_date
