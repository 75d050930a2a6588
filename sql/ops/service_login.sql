-- The service's login, a member of kpi_reader (sql/ops/roles.sql first). A psql script: the
-- password comes in as a variable and never sits in a file.
--   psql -v ON_ERROR_STOP=1 -d sales -v pw="$KPI_DB_PASSWORD" -f sql/ops/service_login.sql
-- Safe to run again: a second run only sets the password.

SELECT format('CREATE ROLE kpi LOGIN PASSWORD %L', :'pw')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kpi') \gexec
ALTER ROLE kpi PASSWORD :'pw';
GRANT kpi_reader TO kpi;
