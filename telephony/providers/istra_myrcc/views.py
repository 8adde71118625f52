"""Views of the myRCC provider: none (see ``urls.py``)."""
