"""Centile Istra End User REST API (myIstra): voicemail, call history backfill, caller-ID, counters.

``transport.py`` (the provider), ``frames.py`` (payloads into values and call
updates), ``backfill.py`` (call history into missing calls, and into the end of
the calls a socket saw begin but never end, such as a myCrm account's of the same
login), ``callerid.py`` (presenting a shop's number on click-to-call),
``console.py`` (counters to the agent's console), ``views.py``/``urls.py`` (the
console's voicemail endpoints and audio), ``tasks.py`` (Celery), ``plugins.py`` (its audio
source and caller-ID presenter), ``apps.py`` (what it registers), ``admin.py``, ``tests/``.
"""
