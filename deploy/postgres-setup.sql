-- opsq's PostgreSQL role and database. Safe to run again: what exists is kept, and the
-- role's password changes only when one is given.
--
--   OPSQ_DB_PASSWORD='...' runuser -u postgres -- \
--       psql -v ON_ERROR_STOP=1 < deploy/postgres-setup.sql
--
-- psql variables (-v NAME=VALUE): role (opsq), db (opsq), password. Without -v password,
-- psql reads it from the environment variable OPSQ_DB_PASSWORD, which keeps it off the
-- command line that `ps` shows; with neither, the role keeps its password (or has none,
-- for peer authentication on the same machine). Needs psql 15 or later (\getenv).
--
-- Then, as the opsq user with OPSQ_DATABASE_URL set, `opsq db upgrade` creates the tables
-- and applies every migration.

\if :{?role}
\else
  \set role opsq
\endif
\if :{?db}
\else
  \set db opsq
\endif
\if :{?password}
\else
  \getenv password OPSQ_DB_PASSWORD
\endif
-- An empty password would clear the role's password: treat it as none given.
\if :{?password}
  SELECT :'password' = '' AS password_empty \gset
  \if :password_empty
    \unset password
  \endif
\endif

-- CREATE ROLE has no IF NOT EXISTS.
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') AS create_role \gset
\if :create_role
  \echo creating role :role
  CREATE ROLE :"role" LOGIN;
\else
  \echo role :role exists
\endif
-- LOGIN again: a role created by hand without it would leave opsq unable to connect.
ALTER ROLE :"role" LOGIN;

\if :{?password}
  -- psql quotes the value (:'password'). Statement logging (log_statement = 'all' or
  -- 'ddl') would record it: such servers should set the password with \password instead.
  \echo setting the password of role :role
  ALTER ROLE :"role" PASSWORD :'password';
\else
  \echo no password given: role :role keeps its password
\endif

-- CREATE DATABASE can neither run inside a function nor take IF NOT EXISTS: build it
-- only when missing, then let \gexec run it.
SELECT format('CREATE DATABASE %I OWNER %I', :'db', :'role')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
-- Owner in any case: the migrations create tables in its public schema, which
-- PostgreSQL 15 lets only the database owner do.
ALTER DATABASE :"db" OWNER TO :"role";
-- Only opsq (the owner) and superusers may connect.
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
\echo database :db is owned by role :role
