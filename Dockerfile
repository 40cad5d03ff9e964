FROM python:3.11-slim
WORKDIR /app
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY shared ./shared
COPY cli ./cli
RUN pip install --no-cache-dir . && useradd --create-home chatlane
USER chatlane
EXPOSE 8000
CMD ["python", "-m", "api.server", "--host", "0.0.0.0", "--port", "8000"]
