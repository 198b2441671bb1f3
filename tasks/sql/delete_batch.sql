delete from persons_anonymized
where run_date = $run_date
