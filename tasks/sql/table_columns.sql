-- Column names of one table in the current schema; used to validate caller-supplied column names
-- before they are used as identifiers.
select column_name
from information_schema.columns
where table_catalog = current_database()
  and table_schema = current_schema()
  and table_name = $table_name
order by ordinal_position
