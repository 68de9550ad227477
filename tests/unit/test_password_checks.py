"""How htpasswd passwords are checked: bcrypt on its own bounded pool, unknown names at the
same cost, failed logins limited per user and address in bounded maps."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import bcrypt
import pytest

from pullthrough.clientauth.htpasswd import (
    BcryptPool,
    Htpasswd,
    HtpasswdError,
    parse_htpasswd,
)
from pullthrough.clientauth.throttle import (
    Allowance,
    FailedLogins,
    LoginThrottled,
    address_key,
)

ALICE = ("alice", "alice-secret-1")


class Recorder:
    """Stands in for ``bcrypt.checkpw``: records where and with what it ran."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, bytes, bytes]] = []
        self.delay = delay
        self.real = bcrypt.checkpw

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.calls.append((threading.current_thread().name, password, hashed))
        time.sleep(self.delay)
        return self.real(password, hashed)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(bcrypt, "checkpw", rec)
    return rec


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text(f"{ALICE[0]}:{bcrypt.hashpw(ALICE[1].encode(), bcrypt.gensalt(6)).decode()}\n")
    return path


async def test_bcrypt_runs_on_threads_of_its_own_not_the_default_executor(
    users: Path, recorder: Recorder
) -> None:
    htpasswd = Htpasswd(users)
    assert await htpasswd.check(*ALICE, remote="127.0.0.1")
    assert not await htpasswd.check(ALICE[0], "wrong", remote="127.0.0.1")
    assert len(recorder.calls) == 2
    for thread, _, _ in recorder.calls:
        assert thread.startswith("pullthrough-bcrypt"), thread  # not asyncio's default pool


async def test_a_right_password_is_hashed_once_then_remembered(
    users: Path, recorder: Recorder
) -> None:
    htpasswd = Htpasswd(users)
    results = await asyncio.gather(*(htpasswd.check(*ALICE) for _ in range(20)))
    assert all(results)
    assert await htpasswd.check(*ALICE)
    assert len(recorder.calls) == 1  # concurrent identical checks share one hash


async def test_a_name_that_is_no_user_costs_a_bcrypt_check_of_the_files_cost(
    users: Path, recorder: Recorder
) -> None:
    htpasswd = Htpasswd(users)
    assert not await htpasswd.check("nobody", ALICE[1])
    assert not await htpasswd.check(ALICE[0], "wrong")
    (_, _, stand_in), (_, _, real) = recorder.calls
    assert stand_in != real and stand_in[:7] == real[:4] + b"06$"  # same cost, 2^6


async def test_a_password_over_72_bytes_is_wrong_and_never_hashed(
    users: Path, recorder: Recorder
) -> None:
    htpasswd = Htpasswd(users)
    for user in (ALICE[0], "nobody"):
        assert not await htpasswd.check(user, ALICE[1] + "x" * 72)
    assert recorder.calls == []


async def test_checks_beyond_the_pools_queue_are_refused_unhashed_and_uncounted(
    users: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = Recorder(delay=0.2)
    monkeypatch.setattr(bcrypt, "checkpw", slow)
    logins = FailedLogins()
    htpasswd = Htpasswd(users, logins=logins, pool=BcryptPool(threads=1, max_waiting=2))
    outcomes = await asyncio.gather(
        *(htpasswd.check(f"user{i}", "guess", remote=f"10.0.0.{i}") for i in range(5)),
        return_exceptions=True,
    )
    assert outcomes[:2] == [False, False]
    for refused in outcomes[2:]:
        assert isinstance(refused, LoginThrottled) and refused.retry_after == 1
    assert len(slow.calls) == 2
    assert len(logins.users) == 2  # the refused ones used nobody's allowance


async def test_over_the_limit_nothing_is_hashed(users: Path, recorder: Recorder) -> None:
    logins = FailedLogins(per_user=Allowance(burst=3, every=60))
    htpasswd = Htpasswd(users, logins=logins)
    for i in range(3):
        assert not await htpasswd.check(ALICE[0], f"guess-{i}", remote=f"10.0.0.{i}")
    with pytest.raises(LoginThrottled, match="for this user") as refused:
        await htpasswd.check(ALICE[0], ALICE[1], remote="10.0.0.9")
    assert refused.value.retry_after == 60
    assert len(recorder.calls) == 3


def test_allowances_refill_and_right_passwords_give_theirs_back() -> None:
    now = [1000.0]
    logins = FailedLogins(
        per_user=Allowance(burst=2, every=10),
        per_address=Allowance(burst=5, every=1),
        clock=lambda: now[0],
    )
    logins.attempt("alice", "10.0.0.1")
    right = logins.attempt("alice", "10.0.0.2")
    logins.succeeded(right)  # that one was no failure
    logins.attempt("alice", "10.0.0.3")
    with pytest.raises(LoginThrottled) as refused:
        logins.attempt("alice", "10.0.0.4")
    assert refused.value.retry_after == 10
    now[0] += 4
    with pytest.raises(LoginThrottled) as refused:
        logins.attempt("alice", "10.0.0.4")
    assert refused.value.retry_after == 6  # ceil of what is left to wait
    now[0] += 6
    logins.attempt("alice", "10.0.0.4")  # refilled by one
    logins.attempt("bob", "10.0.0.4")  # others were never limited


def test_the_maps_of_client_chosen_keys_are_bounded() -> None:
    logins = FailedLogins(max_keys=100)
    for i in range(5000):
        logins.attempt(f"user{i}", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(logins.users) <= 100 and len(logins.addresses) <= 100


def test_ipv6_addresses_are_limited_by_their_64() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key(None) == "unknown"


def test_an_entry_that_is_not_a_whole_bcrypt_hash_is_refused() -> None:
    good = bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()
    assert parse_htpasswd(f"alice:{good}\n", "f") == {"alice": good.encode()}
    with pytest.raises(HtpasswdError, match="not a whole bcrypt hash"):
        parse_htpasswd(f"alice:{good[:-5]}\n", "f")
