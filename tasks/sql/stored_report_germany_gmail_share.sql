select german_users, german_gmail_users, gmail_share_pct
from report_germany_gmail_share
where run_date = $run_date
