# One image for every role (api, aggregator, settlement); the command picks the role.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY domain domain
COPY meter meter
COPY aggregator aggregator
COPY settlement settlement
COPY api api
COPY cli cli
COPY stack stack
RUN pip install --no-cache-dir .
ENV CREDITS_API_HOST=0.0.0.0
CMD ["credits", "api", "--port", "8000"]
