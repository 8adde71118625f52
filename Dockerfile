FROM python:3.11-slim
WORKDIR /app
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# The runtime set only (requirements.txt): every package pinned, and refused unless its file's hash is one
# the lock lists. Tests, benchmarks, the simulator and the demo's tools are not in the image.
COPY requirements.txt .
RUN pip install --require-hashes -r requirements.txt
COPY . .
# The translations compiled here (msgfmt, then gettext removed again): the .mo files are not in git.
RUN apt-get update && apt-get install -y --no-install-recommends gettext \
    && DEBUG=true CTIHUB_VAR_DIR=/tmp/build python manage.py compilemessages \
    && DEBUG=true CTIHUB_VAR_DIR=/tmp/build python manage.py collectstatic --noinput \
    && apt-get purge -y gettext && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* /tmp/build
# The hub runs as an unprivileged user: the code and static files stay root's (read-only to it);
# only var/ (development secrets, SQLite, when no DATABASE_URL/SECRET_KEY are given) is its own.
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home --shell /usr/sbin/nologin ctihub \
    && mkdir -p /app/var && chown ctihub:ctihub /app/var
USER ctihub
EXPOSE 8000
CMD ["python", "-m", "ctihub.web", "-b", "0.0.0.0", "-p", "8000", "ctihub.asgi:application"]
