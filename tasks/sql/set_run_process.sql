-- Record the host and process id of a running flow run.
update pipeline_runs set host = $host, pid = $pid where flow_run_id = $flow_run_id
