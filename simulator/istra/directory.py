"""Who and what exists on the simulated Istra platform: users and extensions.

One :class:`Extension` stands for both things the two APIs name separately: the
myCrm *terminal* (``terminalId``, ``deviceModel``) and the myRCC *extension*
(``v1/rcc/Extension/<id>``, ``addressNumber``...). They share one id, a 64-bit
number kept as a string (ids never pass through a float).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class User:
    login: str
    password: str
    enterprise: str = "e1"
    # "User who wants to use myCrm must have the CRM rights enabled" (myCrm doc, Server configuration).
    mycrm: bool = True
    # myRCC logins are RCC administrators of their enterprise (myRCC doc §2).
    myrcc: bool = True
    # "accounts can be suspended in case of too many failures in a row" (myIstra doc, Istra Password Policy):
    # wrong passwords in a row, and whether config lockoutAfter suspended the user (world.note_login).
    failures: int = 0
    locked: bool = False


@dataclass
class Extension:
    id: str
    number: str
    label: str = ""
    enterprise: str = "e1"
    owner: str | None = None  # the login whose myCrm GetTerminals lists it
    department: str = ""
    photo: str = ""
    pstn_numbers: list[str] = field(default_factory=list)
    device_model: str = "SIP generic device"
    out_of_service: bool = False
    # "a myRCC parameter should be enabled on each extension to be controlled via RCC" (myRCC doc §2).
    myrcc: bool = True

    @property
    def e164(self) -> str:
        return self.pstn_numbers[0] if self.pstn_numbers else self.number


class Directory:
    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.extensions: dict[str, Extension] = {}  # insertion order is the listing order

    def clear(self) -> None:
        self.users.clear()
        self.extensions.clear()

    def add_user(self, user: User) -> User:
        self.users[user.login] = user
        return user

    def add_extension(self, extension: Extension) -> Extension:
        self.extensions[extension.id] = extension
        return extension

    def extension(self, extension_id: str) -> Extension | None:
        return self.extensions.get(str(extension_id))

    def by_number(self, enterprise: str, number: str) -> Extension | None:
        for extension in self.extensions.values():
            if extension.enterprise == enterprise and extension.number == number:
                return extension
        return None

    def terminals_of(self, login: str) -> list[Extension]:
        return [e for e in self.extensions.values() if e.owner == login]

    def rcc_extensions(self, enterprise: str) -> list[Extension]:
        return [e for e in self.extensions.values() if e.enterprise == enterprise and e.myrcc]
