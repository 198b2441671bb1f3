-- Whether migrations have ever run here: schema_migrations is itself created by 0001_init.sql.
select count(*) > 0 as present
from information_schema.tables
where table_catalog = current_database()
  and table_schema = current_schema()
  and table_name = 'schema_migrations'
