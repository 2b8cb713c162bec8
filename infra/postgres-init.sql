-- The three databases of the stack (what `kaizen stack up` creates): MLflow's tracking store and
-- registry, Prefect's server (pg_trgm is needed by its migrations), kaizen's shared data head.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
CREATE DATABASE shared;
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
