"""What the endpoints retailCRM calls do: find the integration and the agent, makeCallUrl's numbers
and call, changeStatus."""

from __future__ import annotations

from dataclasses import dataclass

from accounts.models import Agent
from crm_sync.domain.shops import remember_click_to_call
from crm_sync.models import ExternalPhone, RetailCrmIntegration, client_id_digests
from ctihub.lib.brief_cache import BriefCache
from ctihub.lib.phones import UnusablePhoneNumber, region_of, to_e164
from telephony.models import PbxAccount, Terminal


def integration_for_client_id(client_id: str) -> RetailCrmIntegration | None:
    """The enabled integration with this clientId: one indexed query on its keyed digest.

    The clientId is stored encrypted, so it is matched by ``client_id_digest``.
    The index compares digests, not clientIds, and a digest cannot be computed
    without the field key: how long a lookup takes says nothing about how close
    a guess came. A row found by an old key's digest is moved to the newest key.
    """
    if not client_id:
        return None
    digests = client_id_digests(client_id)
    integration = RetailCrmIntegration.objects.filter(enabled=True, client_id_digest__in=digests).first()
    if integration is not None and integration.client_id_digest != digests[0]:
        RetailCrmIntegration.objects.filter(pk=integration.pk).update(client_id_digest=digests[0])
        integration.client_id_digest = digests[0]
    return integration


def agent_for_code(code: str) -> Agent | None:
    if not code:
        return None
    return Agent.objects.filter(extension_code=code).select_related("user").first()


def terminal_for_integration(agent: Agent, integration: RetailCrmIntegration) -> Terminal | None:
    """The agent's dialling terminal among the accounts this integration serves (all, when it names none).

    The console's choice too (``telephony.control.dialling_terminal``): the admin's, else one fixed rule.
    """
    from telephony.control import dialling_terminal

    account_ids = list(integration.accounts.values_list("id", flat=True))
    return dialling_terminal(agent, account_ids or None)


def present_external_phone(terminal: Terminal, external_phone: str) -> bool:
    """Show the shop's number as the caller-ID of the next call from ``terminal``.

    Through the PBXs' caller-ID presenters (``telephony.plugins``): only the Istra End
    User API (myIstra) can set a user's caller-ID, so when the terminal's agent has
    an End User account on the same platform, it is set there (and put back once the
    call is set up, see ``telephony.providers.istra_enduser.callerid``). Otherwise, or
    when the PBX refuses, this returns False and the PBX presents its default caller-ID.
    """
    from telephony.plugins import present_caller_id

    return present_caller_id(terminal, external_phone)


# makeCallUrl reads numbers in the integration's country on every click.
_regions = BriefCache("retailcrm-integration-phone-region", watch=(ExternalPhone, RetailCrmIntegration, PbxAccount))


@dataclass
class MakeCallNumbers:
    phone: str  # E.164
    external_phone: str = ""  # E.164, or '' (none given, or one that is no phone number)
    warning: str = ""  # what was wrong with externalPhone, for the answer


def make_call_numbers(integration: RetailCrmIntegration, phone: str, external_phone: str = "") -> MakeCallNumbers:
    """makeCallUrl's ``phone`` and ``externalPhone`` in E.164, read in the shop's country.

    retailCRM sends ``phone`` as the customer's card has it, often without a country
    ("8 912 345-67-89" in a Russian shop): it is read in the country of the shop the
    click came from (``externalPhone``), else the integration's (``integration_region``).
    An ``externalPhone`` that is no phone number only costs the caller-ID change: the call
    is placed and ``warning`` says why the caller-ID stayed. UnusablePhoneNumber for ``phone``.
    """
    numbers = MakeCallNumbers(phone="")
    fallback = integration_region(integration) or None
    if external_phone:
        try:
            numbers.external_phone = to_e164(external_phone, fallback)
        except UnusablePhoneNumber as exc:
            numbers.warning = f"externalPhone: {exc}; the call is placed with the PBX's usual caller-ID"
    numbers.phone = to_e164(phone, region_of(numbers.external_phone) or fallback)
    return numbers


def integration_region(integration: RetailCrmIntegration) -> str:
    """The country numbers without one are read in for this integration; '' for DEFAULT_PHONE_REGION.

    The one country of all its shops' numbers, else the one default region of the PBX accounts
    it serves (all accounts when it names none); '' when there is none or they disagree.
    """
    def load() -> str:
        shops = {region_of(phone) for phone in integration.external_phones.values_list("phone", flat=True)} - {""}
        if len(shops) == 1:
            return shops.pop()
        accounts = integration.accounts.all() if integration.accounts.exists() else PbxAccount.objects.all()
        regions = {r.upper() for r in accounts.filter(enabled=True).exclude(default_region="")
                   .values_list("default_region", flat=True)}
        return regions.pop() if len(regions) == 1 else ""

    return _regions.get(integration.pk, load)


# makeCallUrl looks the terminal up on every click (its view keeps the integration and agent briefly too).
_terminals = BriefCache("retailcrm-terminal-for-integration", watch=(Terminal, PbxAccount, Agent, RetailCrmIntegration))


def make_call(integration: RetailCrmIntegration, agent: Agent, phone_e164: str, external_phone: str = "") -> dict:
    """Dial ``phone_e164`` from the agent's terminal; raises ProviderError when the PBX refuses."""
    from telephony.control import NoTerminal, place_call

    terminal = _terminals.get((agent.pk, integration.pk), lambda: terminal_for_integration(agent, integration))
    if terminal is None:
        raise NoTerminal(f"{agent} has no active terminal on a PBX account this retailCRM serves")
    presented = present_external_phone(terminal, external_phone) if external_phone else False
    answer = place_call(terminal, phone_e164)
    if external_phone:
        remember_click_to_call(terminal.pk, phone_e164, external_phone)
    return {"terminal": terminal.pbx_id, "callerIdPresented": presented, "pbx": answer}


def change_user_status(agent: Agent, status: str) -> Agent:
    """Store the status retailCRM reports, push it to consoles; routing reads it."""
    from accounts.domain import set_agent_status

    return set_agent_status(agent, status, source="retailcrm")
