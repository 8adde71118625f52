"""What myCrm calls on ctihub: nothing (it pushes over the sockets we open), so no URL prefix is registered."""

urlpatterns: list = []
