"""What myRCC calls on ctihub: nothing (it pushes over the socket we open), so no URL prefix is registered."""

urlpatterns: list = []
