-- The migration a stored report adds (tasks/sql/NNNN_name.sql in the product): its table.
create table if not exists report_hotmail_by_country (
    run_date date not null,
    country varchar,
    hotmail_users bigint,
    flow_run_id varchar
);
