# The production image: every warmpool process (docker-compose.yml picks the command), with the extras the
# compose topology uses (flower, and the kubernetes and unikraft providers), at requirements.lock's versions.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WARMPOOL_DATA_DIR=/var/lib/warmpool
WORKDIR /srv/warmpool
COPY pyproject.toml requirements.lock README.md alembic.ini ./
COPY app app
COPY config config
COPY workers workers
COPY tasks tasks
COPY proto proto
COPY migrations migrations
RUN pip install --no-cache-dir -c requirements.lock '.[flower,kubernetes,unikraft]'
# The code stays root-owned and read-only to the processes; the one place they write (beat's schedule file,
# anything else under WARMPOOL_DATA_DIR) is a directory of their own.
RUN useradd --system --home-dir /var/lib/warmpool warmpool \
    && install -d -o warmpool -g warmpool -m 0750 /var/lib/warmpool
USER warmpool
EXPOSE 8080 50051 5555
CMD ["warmpool", "api"]
