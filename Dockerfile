FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN DEBUG=true CTIHUB_VAR_DIR=/tmp/build python manage.py collectstatic --noinput
EXPOSE 8000
CMD ["python", "-m", "ctihub.web", "-b", "0.0.0.0", "-p", "8000", "ctihub.asgi:application"]
