"""The event path's PBX accounts: kept a few seconds (``ctihub.lib.brief_cache``), an edit seen at once."""

import pytest

from telephony import domain
from tests.factories import make_account

pytestmark = pytest.mark.django_db


def test_it_reads_an_account_edit_saved_in_this_process_at_once():
    account = make_account(default_region="FR")
    assert domain._account(account.pk).default_region == "FR"
    account.default_region = "DE"
    account.save()
    assert domain._account(account.pk).default_region == "DE"


def test_it_reads_an_account_once_within_its_few_seconds(django_assert_num_queries):
    account = make_account()
    domain._account(account.pk)
    with django_assert_num_queries(0):
        assert domain._account(account.pk).kind == account.kind


def test_it_hands_out_what_the_frame_path_reads_of_an_account_and_no_caller_may_change_it():
    account = make_account(default_region="FR")
    domain._account(account.pk)
    with pytest.raises(AttributeError):
        domain._account(account.pk).default_region = "GB"
    assert domain._account(account.pk) == (account.kind, "FR")
