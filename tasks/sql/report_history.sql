-- German Gmail share across every loaded run date, oldest first, for the history chart.
select run_date, german_users, german_gmail_users, gmail_share_pct
from report_germany_gmail_share
order by run_date
