"""``python -m ctihub.web``: daphne, with an access log that never shows a credential.

daphne writes its access log (on by default) straight to stdout, outside Python's
logging, with each request's full URL: retailCRM's ``clientId`` in the query of
every makeCallUrl and changeUserStatusUrl call, the Telepo webhook's secret and a
recordUrl's signature in the path. This runs daphne's own command line with the
same log, masked the way ``ctihub.logs`` masks every other log line. Arguments are
daphne's.
"""

from __future__ import annotations

from daphne import cli
from daphne.access import AccessLogGenerator


class MaskedAccessLog(AccessLogGenerator):
    def write_entry(self, host, date, request, status=None, length=None, ident=None, user=None):
        from ctihub.logs import mask_secrets

        super().write_entry(host, date, mask_secrets(request), status, length, ident, user)


def main() -> None:
    cli.AccessLogGenerator = MaskedAccessLog  # daphne builds its access log from this name
    cli.CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
