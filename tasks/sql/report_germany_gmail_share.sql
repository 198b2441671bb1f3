-- Report 1: share of German users who use Gmail, with both counts. Always exactly one row.
-- Germany is matched on country_code, not the name: the code is one stable ISO value per country,
-- while names are free text that can change spelling between source versions and locales.
-- The percentage is null (not a division error, not 0) when the date has no German users.
with german_users as (
    select email_domain
    from persons_anonymized
    where run_date = $run_date
      and country_code = 'DE'
),

counts as (
    select
        count(*) as german_users,
        count(*) filter (where email_domain = 'gmail.com') as german_gmail_users
    from german_users
)

select
    german_users,
    german_gmail_users,
    round(100.0 * german_gmail_users / nullif(german_users, 0), 2)::double as gmail_share_pct
from counts
