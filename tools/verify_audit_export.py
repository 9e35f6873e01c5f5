#!/usr/bin/env python3
"""Re-verify a fleetplane audit export (JSON Lines) without fleetplane.

    tools/verify_audit_export.py EXPORT.jsonl --public-key audit-checkpoint.pub.pem

The export is `GET /v1/audit-events.jsonl` (or `fleetctl audit export --format jsonl`): one
event record per line from seq 1, then the checkpoint record that covers them. When old events
were removed (audit retention), the first line is an anchor record: the signed checkpoint the
remaining chain starts from, whose last hash is the first event's `prev_hash`. This script uses
only the Python standard library, and `openssl pkeyutl` (OpenSSL 3) for the Ed25519 signature.

It checks that every event re-hashes to its `hash` (SHA-256 of `prev_hash` and the canonical
encoding documented in store/src/audit.rs), that each `prev_hash` is the previous `hash` (32 zero
bytes before seq 1, the anchor's last hash after a prune), that the checkpoints are signed by the
pinned public key (the signed bytes are
documented in store/src/audit_checkpoints.rs), that its hashes are the events' hashes, and that
the export reaches the checkpoint's seq. Exit status 0: intact; 1: broken (the first bad seq and
the reason on standard output); 2: the file or the key cannot be read.
"""

import argparse
import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import uuid

EVENT_TAG = b"fleetplane.audit.v1\x00"
EVENT_TAG_V2 = b"fleetplane.audit.v2\x00"
CHECKPOINT_TAG = b"fleetplane.audit.checkpoint.v1\x00"
SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
GENESIS = bytes(32)


class Broken(Exception):
    def __init__(self, seq, reason):
        super().__init__(f"broken at seq {seq}: {reason}")
        self.seq = seq
        self.reason = reason


def text_field(text):
    data = text.encode("utf-8")
    return struct.pack(">I", len(data)) + data


def details_digest(event):
    """SHA-256 of the details (canonical version 2); an erased event's tombstone carries it."""
    erased_by = event.get("erased_by")
    if erased_by is not None:
        tombstone = json.loads(event["details"])
        digest = tombstone.get("details_sha256", "")
        expected = '{"erased":true,"details_sha256":"%s","by_event":%d}' % (digest, erased_by)
        if event["details"] == expected and len(digest) == 64:
            return bytes.fromhex(digest)
    return hashlib.sha256(event["details"].encode("utf-8")).digest()


def event_hash(event):
    # Exports from before version 2 have no canonical_version: they are all version 1.
    version = event.get("canonical_version", 1)
    head = (
        uuid.UUID(event["tenant_id"]).bytes
        + struct.pack(">q", event["seq"])
        + struct.pack(">q", event["occurred_at_micros"])
    )
    if version == 1 and event.get("erased_by") is None:
        canonical = EVENT_TAG + head + b"".join(
            text_field(event[k]) for k in ("actor", "action", "target", "details")
        )
    else:
        canonical = (
            EVENT_TAG_V2
            + head
            + b"".join(text_field(event[k]) for k in ("actor", "action", "target"))
            + details_digest(event)
        )
    return hashlib.sha256(bytes.fromhex(event["prev_hash"]) + canonical).digest()


def checkpoint_bytes(c):
    digest = hashlib.sha256(b"".join(bytes.fromhex(h) for h in c["event_hashes"])).digest()
    return (
        CHECKPOINT_TAG
        + uuid.UUID(c["tenant_id"]).bytes
        + struct.pack(">qqq", c["first_seq"], c["seq"], c["created_at_micros"])
        + bytes.fromhex(c["last_hash"])
        + digest
    )


def raw_public_key(pem_text):
    body = "".join(line for line in pem_text.strip().splitlines() if not line.startswith("-----"))
    der = base64.b64decode(body)
    if len(der) != 44 or not der.startswith(SPKI_PREFIX):
        raise ValueError("not an Ed25519 public key (PEM PUBLIC KEY)")
    return der[len(SPKI_PREFIX):]


def signature_valid(pem_path, message, signature):
    with tempfile.TemporaryDirectory() as tmp:
        msg_path = os.path.join(tmp, "message")
        sig_path = os.path.join(tmp, "signature")
        with open(msg_path, "wb") as f:
            f.write(message)
        with open(sig_path, "wb") as f:
            f.write(signature)
        done = subprocess.run(
            ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", pem_path, "-rawin",
             "-in", msg_path, "-sigfile", sig_path],
            capture_output=True,
        )
        return done.returncode == 0


def signed(c, public_key, pem_path):
    """Whether checkpoint `c` is consistent and signed by the pinned key."""
    consistent = (
        c.get("version") == 1
        and 1 <= c["first_seq"] <= c["seq"]
        and len(c["event_hashes"]) == c["seq"] - c["first_seq"] + 1
        and c["event_hashes"][-1] == c["last_hash"]
        and c["key_fingerprint"] == hashlib.sha256(public_key).hexdigest()
    )
    return consistent and signature_valid(pem_path, checkpoint_bytes(c), bytes.fromhex(c["signature"]))


def verify(lines, pem_path):
    """The number of events and the checkpoint's seq; raises Broken at the first bad seq."""
    with open(pem_path, encoding="ascii") as f:
        public_key = raw_public_key(f.read())
    anchor, events, checkpoint = None, [], None
    for number, line in enumerate(lines, 1):
        record = json.loads(line)
        kind = record.get("record")
        if kind == "anchor" and number == 1:
            anchor = record["checkpoint"]
        elif kind == "event" and checkpoint is None:
            events.append(record)
        elif kind == "checkpoint" and checkpoint is None:
            checkpoint = record["checkpoint"]
        else:
            raise ValueError(f"line {number}: not the anchor first, an event or the one checkpoint at the end")

    prev, first = GENESIS, 1
    if anchor is not None:
        if not signed(anchor, public_key, pem_path):
            raise Broken(anchor["seq"], "checkpoint_signature_invalid")
        prev, first = bytes.fromhex(anchor["last_hash"]), anchor["seq"] + 1
    elif events and events[0]["seq"] > 1:
        # Events were removed, and no signed checkpoint vouches for where the rest starts.
        raise Broken(events[0]["seq"] - 1, "anchor_unsigned")
    tenant = events[0]["tenant_id"] if events else None
    if anchor is not None and tenant is not None and anchor["tenant_id"] != tenant:
        raise Broken(anchor["seq"], "checkpoint_mismatch")
    for expected, event in enumerate(events, first):
        if event["seq"] != expected:
            raise Broken(expected, "row_missing")
        if event["tenant_id"] != tenant:
            raise Broken(event["seq"], "link_broken")
        if bytes.fromhex(event["prev_hash"]) != prev:
            raise Broken(event["seq"], "link_broken")
        recomputed = event_hash(event)
        if recomputed != bytes.fromhex(event["hash"]):
            raise Broken(event["seq"], "content_changed")
        prev = recomputed

    last = first + len(events) - 1
    if checkpoint is None:
        raise Broken(last + 1, "no checkpoint covers this export")
    c = checkpoint
    if not signed(c, public_key, pem_path):
        raise Broken(c["seq"], "checkpoint_signature_invalid")
    if tenant is not None and c["tenant_id"] != tenant:
        raise Broken(c["seq"], "checkpoint_mismatch")
    for offset, listed in enumerate(c["event_hashes"]):
        seq = c["first_seq"] + offset
        if seq < first:
            continue  # removed behind the anchor, which is signed itself
        if seq > last:
            raise Broken(last + 1, "behind_checkpoint")
        if events[seq - first]["hash"] != listed:
            raise Broken(seq, "checkpoint_mismatch")
    return first, last, c["seq"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="the JSON Lines export")
    parser.add_argument("--public-key", required=True, help="the pinned checkpoint public key (PEM)")
    args = parser.parse_args()
    try:
        with open(args.export, encoding="utf-8") as f:
            lines = [line for line in f.read().split("\n") if line]
        first, last, covered = verify(lines, args.public_key)
    except Broken as broken:
        print(f"broken at seq {broken.seq}: {broken.reason}")
        return 1
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"cannot verify: {e}", file=sys.stderr)
        return 2
    start = f", from the signed anchor at seq {first - 1}" if first > 1 else ""
    print(f"intact: {last - first + 1} events{start}, signed checkpoint through seq {covered}")
    if covered < last:
        print(f"note: events {covered + 1}..{last} are after the checkpoint (not yet signed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
