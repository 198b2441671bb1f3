-- A fourth report, registered by tests/flows/test_new_report.py only: Hotmail users per country.
select
    country,
    count(*) as hotmail_users
from persons_anonymized
where run_date = $run_date
  and email_domain = 'hotmail.com'
group by country
