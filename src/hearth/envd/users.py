"""Linux accounts of the sandbox, read from its own /etc/passwd and /etc/group.

Parsing the files directly works in every root filesystem (no NSS modules needed), which
matters because envd runs from its own bundle inside roots it knows nothing about.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]  # supplementary group ids, primary first


class UnknownUser(LookupError):
    pass


def _read(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and line[0] != "#"]
    except OSError:
        return []


def lookup(name: str) -> User:
    """The account `name`, or UnknownUser."""
    for fields in _read("/etc/passwd"):
        if len(fields) >= 7 and fields[0] == name:
            uid, gid = int(fields[2]), int(fields[3])
            groups = [gid]
            for g in _read("/etc/group"):
                if len(g) >= 4 and name in g[3].split(",") and g[2].isdigit():
                    gid_extra = int(g[2])
                    if gid_extra not in groups:
                        groups.append(gid_extra)
            return User(name, uid, gid, fields[5] or "/", fields[6], tuple(groups))
    raise UnknownUser(f"unknown user '{name}'")


def name_of_uid(uid: int) -> str:
    """The account name of `uid`, or the number as text (as Go's envd falls back)."""
    for fields in _read("/etc/passwd"):
        if len(fields) >= 3 and fields[2] == str(uid):
            return fields[0]
    return str(uid)


def name_of_gid(gid: int) -> str:
    for fields in _read("/etc/group"):
        if len(fields) >= 3 and fields[2] == str(gid):
            return fields[0]
    return str(gid)
