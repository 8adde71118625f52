"""What accounts announces; the apps above it listen (accounts imports none of them)."""

from django.dispatch import Signal

# Sent after the transaction that stored an agent's new status commits, with sender=Agent and
# agent (the Agent), status and source ("console", "retailcrm"). Telephony pushes it to the agent's
# consoles and the wallboards (``telephony.console.push_agent_status``).
agent_status_changed = Signal()
