-- Base tables of the current schema, for the leak scan of the DuckDB file.
select table_name
from duckdb_tables()
where database_name = current_database()
  and schema_name = current_schema()
order by table_name
