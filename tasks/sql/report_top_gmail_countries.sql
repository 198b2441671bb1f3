-- Report 2: top $top_ranks countries by Gmail users (tasks.common.reports.TOP_RANKS). dense_rank so
-- ties share a rank and every country tied for the last rank is shown: more rows can come back.
with gmail_users_by_country as (
    select
        country,
        count(*) as gmail_users
    from persons_anonymized
    where run_date = $run_date
      and email_domain = 'gmail.com'
    group by country
),

ranked as (
    select
        dense_rank() over (order by gmail_users desc) as rank,
        country,
        gmail_users
    from gmail_users_by_country
)

select
    rank::integer as rank,
    country,
    gmail_users
from ranked
where rank <= $top_ranks
order by rank, country
