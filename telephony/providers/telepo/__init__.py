"""MiCloud Telepo (DigitalIsland backend 5.1): call control, call-state snapshots, CRM connector webhook.

Telepo pushes nothing over sockets. It POSTs a small JSON message to our CRM
connector webhook for every call state change (``views.py``), and answers a
snapshot of a user's calls on request (``reconcile.py`` brings our calls to
it). Calls are driven with bearer-token REST calls (``transport.py``).

Decisions the spec leaves open (see /work/shared/specs/README.md):

* Only hold, resume and the two transfers have their paths spelled out; every
  other action follows ``/api/call/control/v1/<action>/{domain}/{userId}/{callId}``
  and making a call is ``make/{domain}/{userId}/{deviceId}`` (public code). All
  paths and bodies are in ``transport.PATHS`` so they are easy to correct.
* A Telepo user is a ``Terminal`` whose ``pbx_id`` is the userId
  (``alice@organization.org``); its ``extension`` is the deviceId calls are
  placed from. Telepo lists no users over this API, so an admin adds them.
* The webhook's ``call_id`` and the snapshot's ``callId`` name the same call.
* The spec gives no error bodies and no status for a stateToken mismatch: 409
  and 412 are both read as a conflict.
* The webhook has no hold state, so a webhook never says "held": holds are
  learnt from the action's answer and from snapshots.
"""
