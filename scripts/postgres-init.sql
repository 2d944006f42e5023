-- The databases of the stack besides `mlflow` (created first, as compose.yaml's POSTGRES_DB).
-- Run by scripts/stack.py once the cluster is up, and by the postgres image of compose.yaml
-- (mounted into /docker-entrypoint-initdb.d) when its data volume is new.
CREATE DATABASE prefect;
