"""The PBX sockets the workers hold: the supervisor that shares the listeners out, the runner of each
socket, its keep-alives and session checks, the database workers its frames go through, and the
leases that say which worker holds which listener."""
