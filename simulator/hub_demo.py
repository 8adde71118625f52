"""ctihub's side of the demo: an account on the simulator's demo enterprise, its agents, optionally retailCRM.

Development only (refused with DEBUG=false). Idempotent: every `./scripts/run`
brings the demo rows back to what the simulator (``simulator/demo.py``) serves,
keeping the agents' passwords, which are random per checkout and kept in
``var/`` like the demo admin's.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction

from accounts.models import Agent
from crm_sync.models import ExternalPhone, RetailCrmIntegration
from simulator import demo as sim_demo
from telephony.models import PbxAccount, Terminal

ACCOUNT_NAME = "Demo enterprise (simulator)"
INTEGRATION_NAME = "Demo retailCRM (simulator)"
SUPERVISOR = "supervisor"


@dataclass(frozen=True)
class DemoLogin:
    username: str
    password: str
    role: str


def _passwords() -> dict[str, str]:
    path = settings.VAR_DIR / "demo-agents.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    wanted = [a.username for a in sim_demo.AGENTS] + [SUPERVISOR]
    if any(name not in known for name in wanted):
        known.update({name: secrets.token_urlsafe(9) for name in wanted if name not in known})
        path.write_text(json.dumps(known, indent=2))
        path.chmod(0o600)
    return known


def ensure_demo(sim_url: str, with_crm: bool = False) -> list[DemoLogin]:
    """The demo account, agents and supervisor (and the retailCRM integration); returns the logins."""
    if not settings.DEBUG:
        raise RuntimeError("the demo is for development: refused with DEBUG=false")
    passwords = _passwords()
    with transaction.atomic():
        account, _ = PbxAccount.objects.update_or_create(
            name=ACCOUNT_NAME,
            defaults=dict(kind=PbxAccount.Kind.ISTRA_MYRCC, base_url=f"{sim_url}/restletrouter", ws_url="",
                          enterprise=sim_demo.ENTERPRISE, login=sim_demo.RCC_LOGIN, password=sim_demo.RCC_PASSWORD,
                          default_region="FR", enabled=True),
        )
        logins = [_ensure_agent(account, agent, passwords[agent.username]) for agent in sim_demo.AGENTS]
        logins.append(_ensure_user(SUPERVISOR, passwords[SUPERVISOR], supervisor=True))
        if with_crm:
            _ensure_integration(sim_url, account)
    if with_crm:
        from crm_sync.tasks import queue_registration

        queue_registration(RetailCrmIntegration.objects.get(name=INTEGRATION_NAME).pk)
    return logins


def _ensure_user(username: str, password: str, supervisor: bool = False) -> DemoLogin:
    user, created = get_user_model().objects.get_or_create(username=username)
    if created or not user.check_password(password):
        user.set_password(password)
        user.save()
    Agent.objects.update_or_create(user=user, defaults={"is_supervisor": supervisor} if supervisor else {})
    return DemoLogin(username, password, "supervisor" if supervisor else "agent")


def _ensure_agent(account: PbxAccount, agent: sim_demo.DemoAgent, password: str) -> DemoLogin:
    login = _ensure_user(agent.username, password)
    profile = Agent.objects.get(user__username=agent.username)
    profile.extension_code = agent.number
    profile.retailcrm_user_id = agent.retailcrm_user_id
    profile.save()
    # The directory sync fills the rest; the row exists now so the agent's calls pop from the first ring.
    Terminal.objects.update_or_create(
        account=account, pbx_id=agent.extension_id,
        defaults={"extension": agent.number, "label": agent.label, "agent": profile, "active": True},
    )
    return login


def _ensure_integration(sim_url: str, account: PbxAccount) -> None:
    integration, _ = RetailCrmIntegration.objects.update_or_create(
        name=INTEGRATION_NAME,
        defaults=dict(crm_url=sim_url, api_key=sim_demo.RETAILCRM_API_KEY, module_code="ctihub", enabled=True),
    )
    ExternalPhone.objects.get_or_create(integration=integration, site_code=sim_demo.SHOP, phone=sim_demo.SHOP_PHONE)
    integration.accounts.set([account])
