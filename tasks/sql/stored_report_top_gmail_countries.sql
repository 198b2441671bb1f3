select rank, country, gmail_users
from report_top_gmail_countries
where run_date = $run_date
order by rank, country
