-- The service's login, a member of kpi_reader (sql/ops/roles.sql first). A psql script: the
-- password comes in as a variable and never sits in a file.
--   psql -v ON_ERROR_STOP=1 -d sales -v pw="$KPI_DB_PASSWORD" -f sql/ops/service_login.sql
-- Safe to run again: a second run only sets the password.

SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'kpi') AS kpi_new \gset
SELECT format('CREATE ROLE kpi LOGIN PASSWORD %L', :'pw') WHERE :'kpi_new'::boolean \gexec
-- The mark `kpi-service uninstall` drops a role by: made here, not found already there.
SELECT 'COMMENT ON ROLE kpi IS ' || quote_literal('kpi-service: made by sql/ops/service_login.sql')
WHERE :'kpi_new'::boolean \gexec
ALTER ROLE kpi PASSWORD :'pw';
GRANT kpi_reader TO kpi;
