delete from persons_shareable
where run_date = $run_date
