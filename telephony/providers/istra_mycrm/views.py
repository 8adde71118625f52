"""Views of the myCrm provider: none (see ``urls.py``)."""
