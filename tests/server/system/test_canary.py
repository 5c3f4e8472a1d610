"""The relay never holds plaintext (issue 3): an end-to-end run with 1,000 distinct
canary plaintexts, then a scan for every canary (raw, hex, base64 at each alignment)
in everything the relay wrote or sent:

* on SQLite: the main database file, its ``-wal`` and ``-shm`` files (once all 1,000
  ciphertexts are queued, at the end of the run, and after the relay stopped);
* on PostgreSQL: a ``pg_dump`` of the test database (once all are queued, and at the
  end);
* both: the relay's DEBUG log (its whole stdout and stderr) and its Redis traffic
  (a ``MONITOR`` connection and a ``PSUBSCRIBE`` on the run's prefix).

The clients are real: Alice claims Bob's prekey bundle from the relay, starts a session
with the protocol core, and sends each canary as an encrypted, padded TEXT payload;
Bob decrypts every delivery (``decrypt == canary``).

A scan that finds nothing proves nothing unless it could have found something, so
before it counts: the scanner finds a canary planted in random bytes in every form
(:func:`tests.server.canary.prove_detects`), and one planted in each source: a row
inserted in a copy of the SQLite files, a table in the PostgreSQL database before the
dump, a request whose URL the relay logs, a message published under the Redis prefix.
And each source is shown to hold the relay's real data: the ciphertext of a message
left unacknowledged is found in the SQLite files and (as bytea hex) in the dump, and
the relay's own notifications are in the Redis capture.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from e2ee.device_list import PeerDevice, SignedDeviceList
from e2ee.payload import Payload, PayloadType
from e2ee.prekeys import PreKeyBundle
from e2ee.relay_frames import (
    Accepted,
    BundleResult,
    CaughtUp,
    Deliver,
    DeviceListResult,
    GetDeviceList,
    Ok,
    Send,
)
from e2ee.session import SessionRecord, decrypt, start_session
from tests.server.canary import (
    CanaryScanner,
    Hit,
    RedisCapture,
    encodings,
    make_canaries,
    prove_detects,
)
from tests.server.relay_client import NOW, DeviceConnection, TestAccount
from tests.server.relay_process import RelayProcess, Starter
from tests.server.system.databases import Database
from tests.server.system.flows import WAIT, drain, send_pipelined
from tests.services import RUN_PREFIX, connect_redis, redis_url

CANARIES = 1_000


async def _device_list(conn: DeviceConnection, owner: TestAccount) -> SignedDeviceList:
    """Fetch ``owner``'s device list from the relay; its master key must be the one we
    know (the trust decision a real client makes from safety numbers)."""
    req = conn.next_req()
    await conn.send(GetDeviceList(req, owner.user_id))
    answer, _ = await conn.recv_until(DeviceListResult, WAIT)
    assert answer.req == req
    signed = SignedDeviceList.from_bytes(answer.signed_list)
    assert signed.statement.master_pk == owner.master.public_key
    return signed


def _peer(signed: SignedDeviceList, device_id: int = 1001) -> PeerDevice:
    peer = signed.statement.peer(device_id)
    assert peer is not None
    return peer


async def _pg_dump(database: Database) -> bytes:
    url = make_url(database.url)
    cmd = ["pg_dump", "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432)]
    cmd += ["-U", url.username or "postgres", "--no-password", url.database or ""]
    proc = await asyncio.to_thread(
        subprocess.run, cmd, capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


async def _pg_plant(database: Database, canary: bytes) -> None:
    dsn = make_url(database.url).set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await conn.execute("CREATE TABLE canary_probe (t text, b bytea)")
        await conn.execute("INSERT INTO canary_probe VALUES ($1, $2)", canary.decode(), canary)
    finally:
        await conn.close()


def _sqlite_files(path: Path) -> list[tuple[str, bytes]]:
    """The main, -wal and -shm files of a SQLite database, as they are now."""
    out = []
    for suffix in ("", "-wal", "-shm"):
        file = Path(f"{path}{suffix}")
        out.append((f"sqlite{suffix or '-main'}", file.read_bytes() if file.exists() else b""))
    return out


def _sqlite_plant_copy(path: Path, workdir: Path, canary: bytes) -> list[tuple[str, bytes]]:
    """A copy of the database files with ``canary`` written into it (raw and base64),
    through SQLite itself, in the same WAL mode."""
    workdir.mkdir()
    copy = workdir / path.name
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{path}{suffix}").exists():
            shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
    conn = sqlite3.connect(copy)
    try:
        conn.execute("CREATE TABLE canary_probe (b BLOB, t TEXT)")
        conn.execute("INSERT INTO canary_probe VALUES (?, ?)", (canary, base64.b64encode(canary)))
        conn.commit()
        # Read the files while the connection is open (its WAL is not yet checkpointed).
        return [(f"planted-copy-{name}", data) for name, data in _sqlite_files(copy)]
    finally:
        conn.close()


@pytest.mark.asyncio
async def test_no_canary_plaintext_reaches_the_relay(
    database: Database, start_relay: Starter, tmp_path: Path
) -> None:
    canaries = make_canaries(CANARIES)
    planted = make_canaries(4, tag="planted-")  # sqlite or pg, log, redis, self-test
    scanner = CanaryScanner([*canaries, *planted])
    assert scanner.anchors <= 16  # one find pass per form: the scan is cheap
    prove_detects(scanner, planted[3])

    if database.kind == "postgresql" and shutil.which("pg_dump") is None:
        pytest.skip("pg_dump is not installed (PostgreSQL client tools)")
    redis = await connect_redis()  # skips when Redis is unreachable
    await redis.aclose()
    prefix = f"{RUN_PREFIX}canary-{secrets.token_hex(4)}:"
    capture = RedisCapture(redis_url(), prefix)
    await capture.start()
    real = set(canaries)
    hits: list[Hit] = []

    async def while_queued(ciphertexts: list[bytes]) -> None:
        """Every canary's ciphertext is stored now: scan the database as it is."""
        sample = [ciphertexts[0], ciphertexts[len(ciphertexts) // 2], ciphertexts[-1]]
        if database.sqlite_path is not None:
            files = [(f"queued-{n}", d) for n, d in _sqlite_files(database.sqlite_path)]
            joined = b"".join(d for _, d in files)
            assert all(c in joined for c in sample), "the queued ciphertexts are not in the files"
            hits.extend(h for h in scanner.scan_all(files) if h.canary in real)
        else:
            dump = await _pg_dump(database)
            assert all(c.hex().encode() in dump for c in sample), "the queue is not in the dump"
            hits.extend(h for h in scanner.scan(dump, "queued-pg_dump") if h.canary in real)

    try:
        relay = await start_relay(
            database.url, redis_url=redis_url(), redis_prefix=prefix, log_level="debug"
        )
        unacked = await _end_to_end(relay, canaries, while_queued)
        hits += await _scan_everything(
            relay, database, capture, scanner, canaries, planted, unacked, tmp_path
        )
    finally:
        await capture.stop()
    sizes = ", ".join(f"{k} {v // 1024} KiB" for k, v in sorted(scanner.scanned.items()))
    forms = len(encodings(canaries[0]))
    print(f"[{database.kind}] scanned for {len(canaries)} canaries x {forms} forms: {sizes}")
    assert hits == [], f"{len(hits)} canary hits, first: {hits[:3]}"


async def _end_to_end(
    relay: RelayProcess,
    canaries: list[bytes],
    while_queued: Callable[[list[bytes]], Awaitable[None]],
) -> bytes:
    """Alice sends every canary encrypted to Bob (offline: ``while_queued`` runs once
    all are stored), who then decrypts each; then one more message Bob does not
    acknowledge (its ciphertext is returned)."""
    client = relay.client()
    alice = await client.create_account()
    bob = await client.create_account()
    a = await client.connect(alice)
    b = await client.connect(bob)
    await b.expect(CaughtUp)

    upload = b.prekey_upload(one_time=5, kem=5)
    await b.send(upload)
    ok, _ = await b.recv_until(Ok, WAIT)
    assert ok.req == upload.req

    bob_list = await _device_list(a, bob)
    alice_list = await _device_list(b, alice)
    req = await a.claim(bob.user_id, 1001)
    answer, _ = await a.recv_until(BundleResult, WAIT)
    assert answer.req == req
    bundle = PreKeyBundle.from_bytes(answer.bundle)
    sending = start_session(alice.device().device, _peer(bob_list), bundle, None, NOW)

    ids = [secrets.token_bytes(16) for _ in canaries]
    frames = []
    for i, (msg_id, canary) in enumerate(zip(ids, canaries, strict=True)):
        plaintext = Payload(PayloadType.TEXT, msg_id, NOW + i, canary.decode()).to_bytes()
        assert canary in plaintext  # the plaintext really holds the canary
        frames.append(
            Send(msg_id, ((bob.user_id, ((1001, sending.encrypt(plaintext, NOW + i)),)),))
        )
    assert not any(c in f.to_bytes() for c, f in zip(canaries, frames, strict=True))
    await b.close()  # Bob is offline while the canaries are sent
    answers = await send_pipelined(a, frames)
    assert all(isinstance(x, Accepted) for x in answers)
    await while_queued([f.addressed[0][1][0][1] for f in frames])

    b = await client.connect(bob)
    drained = await drain(b)
    assert len(drained.delivered) == len(canaries)
    receiving: SessionRecord | None = None
    alice_peer = _peer(alice_list)
    bob_device = bob.device()
    for i, deliver in enumerate(drained.delivered):
        result = decrypt(
            bob_device.device,
            bob_device.prekeys,
            receiving,
            alice_peer,
            deliver.ciphertext,
            NOW + i,
        )
        result.commit_prekeys(bob_device.prekeys)
        receiving = result.record
        payload = Payload.from_bytes(result.plaintext, from_own_device=False)
        assert payload.body == canaries[i].decode() and payload.client_msg_id == ids[i]

    # One message left in the queue: the sources must show the relay's real data.
    last = sending.encrypt(
        Payload(PayloadType.TEXT, secrets.token_bytes(16), NOW, "x").to_bytes(), NOW
    )
    (x,) = await send_pipelined(
        a, [Send(secrets.token_bytes(16), ((bob.user_id, ((1001, last),)),))]
    )
    assert isinstance(x, Accepted)
    assert (await b.expect(Deliver)).ciphertext == last  # read, never acknowledged
    await a.close()
    await b.close()
    return last


async def _scan_everything(
    relay: RelayProcess,
    database: Database,
    capture: RedisCapture,
    scanner: CanaryScanner,
    canaries: list[bytes],
    planted: list[bytes],
    unacked: bytes,
    tmp_path: Path,
) -> list[Hit]:
    """Plant, then scan every source at the end of the run; the real canaries' hits."""
    real = set(canaries)
    hits: list[Hit] = []

    def check_planted(found: list[Hit], canary: bytes, where: str) -> None:
        assert any(h.canary == canary for h in found), f"planted canary not found in {where}"
        hits.extend(h for h in found if h.canary in real)

    # The log: a request whose URL the relay logs carries a planted canary.
    async with httpx.AsyncClient(timeout=WAIT) as http:
        response = await http.get(
            f"http://127.0.0.1:{relay.port}/healthz?probe={planted[1].decode()}"
        )
        assert response.status_code == 200
    # Redis: a planted canary published under the prefix is captured both ways, and so
    # is everything the relay did before it.
    redis = await connect_redis()
    try:
        await redis.publish(f"{capture.prefix}probe", planted[2])
    finally:
        await redis.aclose()
    await capture.wait_for(planted[2])
    assert f"{capture.prefix}news:".encode() in capture.monitor  # the relay's own traffic
    assert f"{capture.prefix}news:".encode() in capture.published
    for name, data in (
        ("redis-monitor", bytes(capture.monitor)),
        ("redis-psubscribe", bytes(capture.published)),
    ):
        check_planted(scanner.scan(data, name), planted[2], name)

    if database.sqlite_path is not None:
        live = _sqlite_files(database.sqlite_path)
        assert any(unacked in data for _, data in live), (
            "the queue's ciphertext is not in the files"
        )
        assert dict(live)["sqlite-wal"], "no WAL file while the relay runs"
        hits.extend(h for h in scanner.scan_all(live) if h.canary in real)
        copy = _sqlite_plant_copy(database.sqlite_path, tmp_path / "planted", planted[0])
        check_planted(scanner.scan_all(copy), planted[0], "a planted copy of the SQLite files")
    else:
        await _pg_plant(database, planted[0])
        dump = await _pg_dump(database)
        assert unacked.hex().encode() in dump, "the queue's ciphertext is not in the dump"
        check_planted(scanner.scan(dump, "pg_dump"), planted[0], "pg_dump")

    assert await relay.terminate() in (0, -signal.SIGTERM)
    if database.sqlite_path is not None:  # after the shutdown's checkpoint
        hits.extend(
            h for h in scanner.scan_all(_sqlite_files(database.sqlite_path)) if h.canary in real
        )
    log = relay.log_bytes()
    assert b"DEBUG" in log, "the relay did not log at DEBUG"
    check_planted(scanner.scan(log, "relay-log"), planted[1], "the relay's log")
    return hits


def test_scanner_finds_planted_canaries_in_every_form() -> None:
    canaries = make_canaries(50)
    scanner = CanaryScanner(canaries)
    for canary in canaries[:5]:
        prove_detects(scanner, canary)
    # Several in one buffer, each form, each found once with its offset.
    data = b"".join(
        b"--" + needle for c in canaries[10:13] for needle in set(encodings(c).values())
    )
    hits = scanner.scan(data, "mixed")
    assert {h.canary for h in hits} == set(canaries[10:13])
    assert all(data[h.offset :].startswith(encodings(h.canary)[h.form]) for h in hits)
    assert scanner.scan(b"".join(canaries[:3]).lower().replace(b"-", b"_"), "mangled") == []
