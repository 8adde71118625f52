"""Domain functions of the CRM side: what reaches retailCRM about calls, agents and the module.

One module by concern; this package re-exports their names, so ``crm_sync.domain.sync_call`` reads as
before. A test that patches a name patches it in the module that looks it up (``crm_sync.domain.events._due_event``,
``crm_sync.domain.handoff._enqueue``, ``crm_sync.claims.CLAIM_LEASE``), not here.

* ``handoff`` — ``calls_changed``, after every committed change of calls (``telephony.plugins``'
  ``calls_committed``, connected by ``crm_sync.plugins``); it only queues Celery tasks
  (``crm_sync.tasks``); ``call_changed`` does it for one call by id;
* ``events`` — ``sync_call``: the call's events (``in``/``out`` when it starts, ``hangup``
  when it ends), each exactly once, then the finished call into the outbox;
* ``outbox`` — ``upload_outbox``: finished calls to retailCRM's history, 50 at a time;
* ``shops`` — the shop (site code, external phone) a call is about; click-to-call's shop remembered;
* ``routing`` — ``route_call``: responsible-manager routing of a shared line's call;
* ``registration`` — ``register_integration``: the module's registration (codes, shops, URLs);
* ``endpoints`` — ``make_call`` / ``change_user_status`` and the lookups: what the endpoints retailCRM calls do;
* ``agent_status`` — ``status_changed`` / ``push_agent_status``: a status set in ctihub to retailCRM, not one
  retailCRM sent (``accounts.signals.agent_status_changed``, connected by ``crm_sync.plugins``);
* ``cards`` — ``card_fields_many``: what a call card shows from retailCRM;
* ``sweep`` — the periodic catch-up for anything a lost task or an outage left;
* ``common`` — retry and backoff, the client, the integrations serving an account, ``crm_sync_state``.

Exactly once: every send is done by the holder of a claim on the call's
``CrmCallSync`` row, taken with a conditional UPDATE; "sent" is written only
after retailCRM accepted. See ``CrmCallSync`` for the rules.
"""

from crm_sync.domain.cards import (  # noqa: F401
    ROUTED_CARD_WINDOW,
    card_fields,
    card_fields_many,
)
from crm_sync.domain.common import (  # noqa: F401
    ACTIVE_STATES,
    BACKOFF_CAP,
    BACKOFF_FIRST,
    RetryLater,
    _refresh_crm_sync_state,
    backoff,
    client_for,
    integrations_for,
)
from crm_sync.domain.endpoints import (  # noqa: F401
    MakeCallNumbers,
    _regions,
    _terminals,
    agent_for_code,
    change_user_status,
    integration_for_client_id,
    integration_region,
    make_call,
    make_call_numbers,
    present_external_phone,
    terminal_for_integration,
)
from crm_sync.domain.events import (  # noqa: F401
    EVENT_BACKOFF_CAP,
    START_EVENT_STALE_AFTER,
    EventsBusy,
    SyncReport,
    _claim,
    _due_event,
    _release,
    _send_claimed_events,
    _send_event,
    _settle_unknown_outcome,
    send_due_events,
    sync_call,
)
from crm_sync.domain.handoff import (  # noqa: F401
    SERVING,
    _enqueue,
    _start_events_settled,
    call_changed,
    calls_changed,
    serving_integrations,
)
from crm_sync.domain.outbox import (  # noqa: F401
    RECORD_RECHECK,
    UploadReport,
    _drain,
    _due_outbox,
    _hold,
    _postpone,
    _records,
    _refuse,
    _resume_postponed,
    _still_waiting,
    _try_later,
    _upload_one_by_one,
    _upload_rows,
    claim_batch,
    enter_outbox,
    outbox_size,
    record_wait_until,
    upload_outbox,
    upload_skip_reason,
)
from crm_sync.domain.registration import (  # noqa: F401
    integrations_to_reregister,
    register_integration,
    registered_agents,
    registration_payload,
)
from crm_sync.domain.routing import (  # noqa: F401
    _routing_done,
    free_manager_extension,
    route_call,
)
from crm_sync.domain.shops import (  # noqa: F401
    CLICK_TO_CALL_MEMORY_SECONDS,
    _click_to_call_key,
    dialled_number,
    recall_click_to_call,
    remember_click_to_call,
    shop_of,
)
from crm_sync.domain.sweep import (  # noqa: F401
    START_EVENT_SWEEP_GRACE,
    SWEEP_GRACE,
    SWEEP_HORIZON,
    SWEEP_LIMIT,
    SweepReport,
    sweep,
)
