select gmail_users_over_60
from report_gmail_users_over_60
where run_date = $run_date
