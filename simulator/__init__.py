"""A simulator of the vendor systems ctihub talks to, written from their specs.

The PBXs (Centile Istra myCrm, myRCC and End User API; MiCloud Telepo) and
retailCRM are out of reach from here, so the demo and the tests talk to this
instead. It follows ``shared/specs`` exactly: paths, headers, cookies, tokens,
status codes and error bodies. Tests and the demo drive it through its control
API under ``/_sim/``.
"""
