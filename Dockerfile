FROM python:3.11-slim
WORKDIR /srv/warmpool
COPY pyproject.toml README.md alembic.ini ./
COPY app app
COPY config config
COPY workers workers
COPY tasks tasks
COPY proto proto
COPY migrations migrations
RUN pip install --no-cache-dir . && useradd --system warmpool
USER warmpool
EXPOSE 8080 50051 5555
CMD ["warmpool", "api"]
