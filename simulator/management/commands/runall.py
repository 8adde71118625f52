"""Runs the whole hub in one terminal: daphne, a Celery worker, beat and the simulator.

daphne is ``python -m ctihub.web``, which runs ``WEB_PROCESSES`` daphne processes on the one port.

This is the newcomer's path and the demo. Production runs each process on its
own (see docker-compose.yml). If one process dies the others are stopped, so a
broken setup fails loudly instead of half-working.
"""

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from ctihub.lib import embedded_redis

STOP_GRACE_SECONDS = 10


class Command(BaseCommand):
    help = "Migrate, create the demo admin, and run web + worker + beat + simulator until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--simulator-port", type=int, default=8100)
        parser.add_argument("--no-simulator", action="store_true", help="Do not start the built-in PBX/CRM simulator.")
        parser.add_argument("--demo-traffic", action="store_true",
                            help="Play demo calls on the simulator's demo enterprise at a human rate.")
        parser.add_argument("--demo-calls-per-minute", type=float, default=6.0)
        parser.add_argument("--demo-crm", action="store_true",
                            help="Also point the demo at the simulated retailCRM (events, uploads, routing).")

    def handle(self, *args, **options):
        child_env = dict(os.environ)
        self._public_base_url_follows_port(options, child_env)
        call_command("migrate", interactive=False, verbosity=0)
        call_command("ensure_demo_admin")
        if settings.EMBEDDED_REDIS:
            # Started once here; the children get its URL and so never start their own.
            child_env["REDIS_URL"] = embedded_redis.ensure_running(settings.VAR_DIR)
            self.stdout.write(f"Embedded Redis on {settings.VAR_DIR / 'redis.sock'}")
        commands = self._commands(options)
        children = {name: subprocess.Popen(argv, env=child_env) for name, argv in commands.items()}
        if not options["no_simulator"]:
            self._seed_demo(options, children)
        self.stdout.write(f"ctihub is up: {settings.PUBLIC_BASE_URL}/ ({settings.WEB_PROCESSES} web processes: "
                          "WEB_PROCESSES; Ctrl-C stops everything)")
        exit_code = 0
        stopping = False

        def request_stop(signum, frame):
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)
        try:
            while not stopping:
                for name, process in children.items():
                    if process.poll() is not None:
                        self.stderr.write(f"{name} exited with code {process.returncode}; stopping the others")
                        exit_code = 1
                        stopping = True
                        break
                time.sleep(0.2)
        finally:
            self._stop(children)
            if settings.EMBEDDED_REDIS:
                embedded_redis.stop(settings.VAR_DIR)
        if exit_code:
            sys.exit(exit_code)

    @staticmethod
    def _public_base_url_follows_port(options, child_env: dict) -> None:
        """Unless PUBLIC_BASE_URL is set (environment or .env), it is where this run serves: ``--port`` and
        ``--host``. Otherwise ``--port 8010`` registered http://127.0.0.1:8000 as retailCRM's makeCallUrl and
        printed :8000 links."""
        if os.environ.get("PUBLIC_BASE_URL", "").strip():
            return
        host = options["host"]
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"  # all interfaces: this machine's own address reaches them
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address, as a URL writes it
        settings.PUBLIC_BASE_URL = f"http://{host}:{options['port']}"
        child_env["PUBLIC_BASE_URL"] = settings.PUBLIC_BASE_URL

    def _commands(self, options) -> dict[str, list[str]]:
        python = sys.executable
        commands = {
            "web": [python, "-m", "ctihub.web", "-b", options["host"], "-p", str(options["port"]), "ctihub.asgi:application"],
            "worker": [python, "-m", "celery", "-A", "ctihub", "worker", "--loglevel", "INFO", "--concurrency", "2"],
            # retailCRM's call events on threads of their own (no PBX sockets): see docs/performance.md.
            "events": [python, "-m", "celery", "-A", "ctihub", "worker", "--loglevel", "INFO", "--concurrency", "4",
                       "-Q", settings.CRM_EVENTS_QUEUE, "--hostname", "events@%h"],
            "beat": [
                python, "-m", "celery", "-A", "ctihub", "beat", "--loglevel", "INFO",
                "--schedule", str(settings.VAR_DIR / "celerybeat-schedule"),
            ],
        }
        if not options["no_simulator"]:
            commands["simulator"] = [python, "-m", "simulator", "--host", "127.0.0.1", "--port",
                                     str(options["simulator_port"]), "--demo"]
            if options["demo_traffic"]:
                commands["simulator"] += ["--demo-calls-per-minute", str(options["demo_calls_per_minute"])]
        return commands

    def _seed_demo(self, options, children) -> None:
        """Once the simulator answers: the demo account and agents, and their logins for the newcomer."""
        import requests

        from simulator.hub_demo import ensure_demo

        sim_url = f"http://127.0.0.1:{options['simulator_port']}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and children["simulator"].poll() is None:
            try:
                if requests.get(f"{sim_url}/_sim/health", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        logins = ensure_demo(sim_url, with_crm=options["demo_crm"])
        for login in logins:
            self.stdout.write(f"Demo {login.role}: {settings.PUBLIC_BASE_URL}/  user {login.username}  password {login.password}")
        if options["demo_crm"]:
            self.stdout.write(f"Demo retailCRM: {sim_url}/_sim/retailcrm/events and /calls show what it received")

    def _stop(self, children):
        for process in children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in children.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
