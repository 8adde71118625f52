"""The floor of makeCallUrl (benchmark 4): a bare DRF view that parses the same query and answers JSON.

Served by the same daphne as ctihub's own views, through the same request handling
(``ctihub.lib.http_pool``) and middleware, and routed only when ``settings.BENCH_FLOORS``
is true (``ctihub/urls.py``). What makeCallUrl costs above this view is ctihub's own
work: the clientId and agent look-ups, the rate limit, the PBX request, its logs.
"""

from __future__ import annotations

from django.urls import path
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView


class FloorMakeCallQuery(serializers.Serializer):
    """makeCallUrl's query: the same fields, no look-ups."""

    clientId = serializers.CharField()
    code = serializers.CharField()
    userId = serializers.CharField()
    phone = serializers.CharField()
    externalPhone = serializers.CharField(required=False, allow_blank=True)


class FloorMakeCallView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []  # as makeCallUrl: retailCRM sends no session or token

    def get(self, request):
        query = FloorMakeCallQuery(data=request.query_params)
        if not query.is_valid():
            return Response({"success": False, "reason": str(query.errors)}, status=400)
        return Response({"success": True, "callerIdPresented": False})


urlpatterns = [
    path("make-call", FloorMakeCallView.as_view(), name="bench-floor-make-call"),
]
