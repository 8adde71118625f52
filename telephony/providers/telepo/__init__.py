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
* A call rings on several devices at once, each a branch (``branch_id``,
  ``device_type``) numbered in the call's one ``seq_num`` sequence; a call ends
  with its last branch, and a VOICEMAIL or QUEUE device taking it is not the
  agent answering (``branches.py``).
* A state, status, reason, direction or device type the spec does not list is
  kept as given (in the call's event) and logged once per account and value;
  the call stays live in its last known state (``frames.py``, ``branches.py``).
* An action's 200 answer with ``"event": "FAILED"`` (the spec's sample) is a
  refusal: a permanent ``ProviderError`` with Telepo's ``eventDescription``.
"""
