"""``python -m ctihub.web``: daphne on every core, with an access log that never shows a credential.

daphne writes its access log (on by default) straight to stdout, outside Python's
logging, with each request's full URL: retailCRM's ``clientId`` in the query of
every makeCallUrl and changeUserStatusUrl call, the Telepo webhook's secret and a
recordUrl's signature in the path. This runs daphne's own command line with the
same log, masked the way ``ctihub.lib.logs`` masks every other log line. Arguments are
daphne's.

One daphne is one Python process, which the GIL keeps to about one core: on a 2-core
machine a bare DRF view tops out near 250 requests/s whatever the other core does
(issue 16). With ``WEB_PROCESSES`` above 1 (the default is the number of cores) this
module is a small supervisor instead: it binds the port once and starts that many
daphne children listening on that one socket (daphne's ``--fd``, an adopted Twisted
port). Each new connection goes to whichever child accepts it first: usually an idle
one, as a child busy with a request is not waiting on the socket. One shared socket
rather than ``SO_REUSEPORT`` per child: that would hash each connection to one child's
own queue however busy the child is, reset the connections queued on a child that
dies, and daphne's Twisted endpoint strings cannot set it anyway. With one socket,
what a dead child had not yet accepted waits for the others while it is replaced.
Each child accepts one connection per turn of its loop and then leaves the port to its
siblings for a millisecond (Twisted accepts up to 100 at once, then as many as it got last
time): a child woken by a burst took most of it, 15 or 17 of 20 connections, and kept their
keep-alive requests on one core.

The supervisor restarts a child that dies: at once if it had been serving, after a
pause if it died while starting, and after ``START_FAILURES_LIMIT`` such deaths in a
row it stops them all and exits 1, so a broken setup fails loudly (``runall`` stops
everything, a container restarts) instead of spinning. On SIGTERM or SIGINT each child
gets one SIGTERM and ``STOP_GRACE_SECONDS`` to finish, then SIGKILL. Each child runs in a
session of its own (the kernel's autogroup would otherwise share one process's CPU among
them all: ``_own_scheduling_group``), so a terminal's Ctrl-C reaches the supervisor only,
which turns it into that one SIGTERM; children also ignore SIGINT, and stop by themselves
if the supervisor disappears.

Consoles and makeCallUrl work whichever child a request reaches: the channel layer,
sessions, rate limits and metrics live in Redis and PostgreSQL, and the few caches a
process keeps (``ctihub.lib.brief_cache``) expire within seconds. ``WEB_PROCESSES=1`` runs
daphne in this process as before, with no supervisor. Several processes need a TCP
port on IPv4 (``-b``/``-p``): for ``-u``, ``-e`` or ``--fd`` set ``WEB_PROCESSES=1``.
"""

from __future__ import annotations

import logging
import os
import pprint
import signal
import socket
import subprocess
import sys
import threading
import time

from daphne import cli
from daphne.access import AccessLogGenerator

logger = logging.getLogger("ctihub.web")

# How a child learns it is one: the shared socket's descriptor, and the supervisor to outlive never.
LISTEN_FD_ENV = "CTIHUB_WEB_LISTEN_FD"
PARENT_PID_ENV = "CTIHUB_WEB_PARENT_PID"
# daphne gives an application 10 s to finish after its client left (--application-close-timeout); a margin.
STOP_GRACE_SECONDS = 15
# A child that dies sooner than this after its start never served: a broken setup, not a crash to restart at once.
START_SECONDS = 10
START_FAILURES_LIMIT = 3
# Twisted listens with a backlog of 50 (as a single daphne still does): in a connect storm (a deploy, a network
# blip: every console at once) a full backlog drops SYNs and clients wait out SYN retries of 1 s, 3 s, 7 s.
# The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = socket.SOMAXCONN
# How long a child leaves the shared port to its siblings after accepting a connection: a burst of connections
# spreads over the children, and a child caps at 1 / ACCEPT_PAUSE_SECONDS new connections a second (a connect
# storm of 1,000 consoles over two children takes half a second of it).
ACCEPT_PAUSE_SECONDS = 0.001


class MaskedAccessLog(AccessLogGenerator):
    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None):
        from ctihub.lib.logs import mask_secrets

        super().write_entry(host, date, mask_secrets(request), status, length, ident, user)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    inherited = os.environ.get(LISTEN_FD_ENV)
    if inherited is not None:
        _serve(argv, inherited_fd=int(inherited), parent_pid=int(os.environ[PARENT_PID_ENV]))
    elif (processes := configured_processes()) == 1:
        _serve(argv)
    else:
        sys.exit(Supervisor(argv, processes).run())


def configured_processes() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ctihub.settings")
    from django.conf import settings

    return settings.WEB_PROCESSES


def _serve(argv: list[str], inherited_fd: int | None = None, parent_pid: int | None = None) -> None:
    """daphne's own command line, in this process."""
    cli.AccessLogGenerator = MaskedAccessLog  # daphne builds its access log from this name
    pretty_print_only_when_logged()
    interface = cli.CommandLineInterface()
    if inherited_fd is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # before the reactor runs: Twisted then leaves it ignored
        _own_scheduling_group()
        _listen_on(interface, inherited_fd)
        _accept_one_at_a_time()
        _leave_with(parent_pid)
    elif (own := _own_listening_socket(argv)) is not None:
        _own_sockets.append(own)  # Twisted adopts a duplicate; this one must stay open as long
        _listen_on(interface, own.fileno())
    interface.run(argv)


_own_sockets: list[socket.socket] = []


class _PrettyWhenFormatted:
    """``pprint.pformat(value)``, made only if a log line is written with it (``str`` or ``format``)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __str__(self) -> str:
        return pprint.pformat(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def pretty_print_only_when_logged() -> None:
    """autobahn pretty-prints each websocket's 27 options for a debug line (``WebSocketProtocol._connectionMade``)
    whether or not debug lines are logged (they are not): 5% of daphne's CPU in a connect storm (issue 16).
    Given this in place of ``pformat``, its logger makes the text only for a line it writes."""
    from autobahn.websocket import protocol

    protocol.pformat = _PrettyWhenFormatted


def _own_listening_socket(argv: list[str]) -> socket.socket | None:
    """One process: the port bound here with ``LISTEN_BACKLOG``, as the supervisor binds it, not by Twisted.

    Twisted listens with a backlog of 50: in a connect storm of 1,000 consoles the kernel counted
    ~820 listen overflows, each a client waiting out a SYN retry (1 s, then 3 s). None when daphne's
    arguments ask for another kind of socket (``-u``, ``-e``, ``--fd``, IPv6): daphne binds those itself.
    """
    args = cli.CommandLineInterface().parser.parse_args(argv)  # daphne's own usage errors, exit 2
    if args.unix_socket or args.socket_strings or args.file_descriptor is not None:
        return None
    host = args.host or cli.DEFAULT_HOST
    if ":" in host:
        return None
    port = cli.DEFAULT_PORT if args.port is None else args.port
    try:
        return socket.create_server((host, port), backlog=LISTEN_BACKLOG)  # SO_REUSEADDR, as Twisted
    except OSError as exc:
        sys.exit(f"ctihub.web: cannot listen on {host}:{port}: {exc}")


def _own_scheduling_group() -> None:
    """This child in a session of its own, so that the kernel shares the cores to it as to any process.

    Linux's autogroup (``sched_autogroup_enabled``, on in most distributions' kernels) puts every session
    of the root cgroup in one scheduling group, and a group gets one process's share of a busy core
    whatever it runs: the children of one supervisor, in its session, got together what one daphne
    gets. Measured: two busy children against a session of two busy loops got 48-50% of the CPU,
    62-64% each in its own session (2/3 is two processes' fair share). In a cgroup of its own
    (systemd, Docker) autogroup does not apply and this changes nothing. The supervisor still
    stops every child (one SIGTERM each) and a child whose supervisor vanished stops by itself
    (``_leave_with``); a terminal's signals reach the supervisor only, as SIGINT already did.
    """
    try:
        os.setsid()
    except OSError:  # already a process group leader (started by hand with the supervisor's variables)
        pass


def _listen_on(interface: cli.CommandLineInterface, fd: int) -> None:
    """The supervisor's socket instead of the ``-b``/``-p`` the child was given (the same arguments as its parent)."""
    parse = interface.parser.parse_args

    def parse_args(args=None, namespace=None):
        parsed = parse(args, namespace)
        parsed.host, parsed.port, parsed.file_descriptor = None, None, fd
        return parsed

    interface.parser.parse_args = parse_args


def _accept_one_at_a_time() -> None:
    """One ``accept`` per wake-up of this child's listening port, then a pause, so siblings get their share.

    Every child is woken by a new connection; the first to run took what was waiting, and on a busy machine
    it ran again before its sibling was scheduled at all. After each connection it accepts, a child leaves
    the port to its siblings for ``ACCEPT_PAUSE_SECONDS`` (what is waiting stays queued in the kernel meanwhile).
    """
    from twisted.internet import tcp

    accept = tcp.Port.doRead

    def doRead(port):
        from twisted.internet import reactor  # daphne's own (asyncio), installed by the time a port is read

        port.numberAccepts = 1  # Twisted's own adaptive count grows to whatever one wake-up found waiting
        accept(port)
        if port.connected:
            port.stopReading()
            reactor.callLater(ACCEPT_PAUSE_SECONDS, _resume_accepting, port)

    tcp.Port.doRead = doRead


def _resume_accepting(port) -> None:
    if port.connected:
        port.startReading()


def _leave_with(parent_pid: int) -> None:
    """A child whose supervisor was killed outright (SIGKILL, the OOM killer) stops as if told to."""

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="ctihub-web-parent", daemon=True).start()


def listen_address(argv: list[str]) -> tuple[str, int]:
    """The IPv4 address and port daphne's arguments ask for; exits with a reason if they ask for another kind."""
    args = cli.CommandLineInterface().parser.parse_args(argv)  # daphne's own usage errors, exit 2
    if args.unix_socket or args.socket_strings or args.file_descriptor is not None:
        sys.exit("ctihub.web: several web processes share one TCP port (-b/-p); "
                 "with -u, -e or --fd set WEB_PROCESSES=1")
    host = args.host or cli.DEFAULT_HOST
    if ":" in host:
        sys.exit(f"ctihub.web: several web processes listen on IPv4 only, not {host}; set WEB_PROCESSES=1")
    return host, cli.DEFAULT_PORT if args.port is None else args.port


class Supervisor:
    def __init__(self, argv: list[str], processes: int):
        self.argv = argv
        self.processes = processes
        self.children: list[subprocess.Popen | None] = [None] * processes
        self.started_at = [0.0] * processes
        self.start_failures = [0] * processes
        self.restart_at: list[float | None] = [None] * processes
        self.stop_signal: int | None = None
        self.gave_up = False

    def run(self) -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)-15s %(levelname)-8s %(message)s")
        host, port = listen_address(self.argv)
        try:
            self.sock = socket.create_server((host, port), backlog=LISTEN_BACKLOG)  # SO_REUSEADDR, as Twisted
        except OSError as exc:
            logger.error("ctihub.web: cannot listen on %s:%s: %s", host, port, exc)
            return 1
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        for slot in range(self.processes):
            self._start(slot)
        logger.info("ctihub.web: %d daphne processes on %s:%s (pids %s)", self.processes, host, port,
                    " ".join(str(child.pid) for child in self.children))
        try:
            while self.stop_signal is None and not self.gave_up:
                self._tend()
                time.sleep(0.1)
        finally:
            self._stop_all()
        return 1 if self.gave_up else 0

    def _request_stop(self, signum, frame) -> None:
        self.stop_signal = signum

    def _start(self, slot: int) -> None:
        env = dict(os.environ, **{LISTEN_FD_ENV: str(self.sock.fileno()), PARENT_PID_ENV: str(os.getpid())})
        # daphne writes its access log to stdout without flushing: block-buffered, the children's lines would
        # interleave mid-line in the one log they share. Unbuffered, each line is one write.
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.children[slot] = subprocess.Popen([sys.executable, "-m", "ctihub.web", *self.argv], env=env,
                                               pass_fds=(self.sock.fileno(),))
        self.started_at[slot] = time.monotonic()
        self.restart_at[slot] = None

    def _tend(self) -> None:
        now = time.monotonic()
        for slot, child in enumerate(self.children):
            if self.restart_at[slot] is not None:
                if now >= self.restart_at[slot]:
                    self._start(slot)
                    logger.info("ctihub.web: started daphne process %d", self.children[slot].pid)
                continue
            code = child.poll()
            if code is None:
                continue
            lived = now - self.started_at[slot]
            if lived >= START_SECONDS:
                self.start_failures[slot] = 0
                logger.warning("ctihub.web: daphne process %d exited (code %s) after %.0f s; starting another",
                               child.pid, code, lived)
                self.restart_at[slot] = now
                continue
            self.start_failures[slot] += 1
            if self.start_failures[slot] >= START_FAILURES_LIMIT:
                logger.error("ctihub.web: daphne process %d exited (code %s) while starting, %d times in a row; "
                             "stopping", child.pid, code, self.start_failures[slot])
                self.gave_up = True
                return
            logger.warning("ctihub.web: daphne process %d exited (code %s) while starting; another in %d s",
                           child.pid, code, self.start_failures[slot])
            self.restart_at[slot] = now + self.start_failures[slot]

    def _stop_all(self) -> None:
        self.sock.close()  # the children hold their own copies; nothing new should queue for them now
        running = [child for child in self.children if child is not None and child.poll() is None]
        for child in running:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in running:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("ctihub.web: daphne process %d did not stop within %d s; killed",
                               child.pid, STOP_GRACE_SECONDS)
                child.kill()
                child.wait()


if __name__ == "__main__":
    main()
