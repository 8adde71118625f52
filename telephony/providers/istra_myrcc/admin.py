"""What the account's admin page says about a myRCC account: nothing beyond the common fields."""


def notes(account) -> list[tuple[str, str]]:
    return []
