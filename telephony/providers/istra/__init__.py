"""What the three Centile Istra providers share (myCrm, myRCC, the End User API): not a provider itself.

``session.py`` (one logged-in session: login, renewal, the login guard, redirects), ``errors.py``
(Istra's error answers as ``ProviderError``), ``framing.py`` (the websocket frames' items and fields),
``tests/``. The TLS trust store is the base package's (``ctihub.lib.trust_store``).
"""
