# PostgreSQL 15 with pg_cron (Debian's package) and pgmq registered as an extension from
# the SQL script the pinned PyPI `pgmq` package ships, as scripts/db.sh does locally.
FROM postgres:15-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15-cron python3-pip \
 && pip3 install --break-system-packages --no-deps pgmq==1.1.4 \
 && cp "$(python3 -c 'import pgmq, os; print(os.path.dirname(pgmq.__file__))')/sql/pgmq.sql" \
       "/usr/share/postgresql/15/extension/pgmq--1.13.0.sql" \
 && rm -rf /var/lib/apt/lists/*
COPY db/pgmq/pgmq.control /usr/share/postgresql/15/extension/pgmq.control
RUN sed -i 's/@VERSION@/1.13.0/' /usr/share/postgresql/15/extension/pgmq.control
