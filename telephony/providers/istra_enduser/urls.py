"""The console's voicemail endpoints, under /enduser/ (see views.py)."""

from django.urls import path, re_path

from telephony.providers.istra_enduser import views

urlpatterns = [
    path("voicemails/", views.voicemail_list, name="enduser-voicemails"),
    path("voicemails/<int:account_id>/<str:voicemail_id>/read", views.voicemail_read, name="enduser-voicemail-read"),
    path("voicemails/<int:account_id>/<str:voicemail_id>/delete", views.voicemail_delete,
         name="enduser-voicemail-delete"),
    path("voicemails/<int:account_id>/<str:voicemail_id>/call-me", views.voicemail_call_me,
         name="enduser-voicemail-call-me"),
    re_path(r"^voicemails/(?P<account_id>\d+)/(?P<voicemail_id>[0-9A-Za-z-]+)\.(?P<audio_format>ogg|aac|mp4|au)$",
            views.voicemail_audio, name="enduser-voicemail-audio"),
]
