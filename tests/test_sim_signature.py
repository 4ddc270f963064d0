"""api.signature: the X-Hub-Signature-256 check the webhook receiver uses."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from api.signature import sign, verify_signature

BODY = b'{"object":"whatsapp_business_account","entry":[]}'


def test_sign_is_hmac_sha256_hex_of_the_raw_body():
    expected = hmac.new(b"s3cret", BODY, hashlib.sha256).hexdigest()
    assert sign(BODY, "s3cret") == "sha256=" + expected


def test_verify_accepts_any_current_secret_during_rotation():
    header = sign(BODY, "new")
    assert verify_signature(BODY, header, ["new"])
    assert verify_signature(BODY, header, ["old", "new"])
    assert not verify_signature(BODY, header, ["old"])
    assert not verify_signature(BODY, header, [])
    assert not verify_signature(BODY, header, [""])


def test_verify_rejects_missing_or_malformed_headers():
    good = sign(BODY, "k")
    for header in (None, "", "sha1=" + good[7:], good[7:], "sha256=", "sha256=zz", good[:-2]):
        assert not verify_signature(BODY, header, ["k"])
    assert verify_signature(BODY, good.upper().replace("SHA256=", "sha256="), ["k"])


@given(st.binary(max_size=2048), st.text(min_size=1, max_size=64),
       st.text(min_size=1, max_size=64))
def test_signatures_bind_body_and_secret(body, secret, other):
    header = sign(body, secret)
    assert verify_signature(body, header, [secret])
    assert verify_signature(body, header, [other, secret])
    if other != secret:
        assert not verify_signature(body, header, [other])
    assert not verify_signature(body + b"x", header, [secret])
