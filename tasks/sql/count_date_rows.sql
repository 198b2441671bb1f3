-- Rows of one run date's batch (what a failed run left in place).
select count(*) from persons_anonymized where run_date = $run_date
