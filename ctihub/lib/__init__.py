"""The shared tools of the project's apps. Imports no app (accounts, telephony, crm_sync, ...) and
nothing of the project's wiring (ctihub.settings, celery, urls, asgi, routing): docs/architecture.md."""
