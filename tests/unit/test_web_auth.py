"""Stored web passwords: the KDF parameters travel with each hash, and absurd ones are refused."""

from __future__ import annotations

import pytest

from wmbus_stream.io.passwords import MAX_KDF_MEMORY, SCRYPT_N, SCRYPT_P, SCRYPT_R, Credential, hash_password, verify_password

PASSWORD = "k7d-Wq2m-Test-Pass"


def test_a_hash_of_the_earlier_parameters_still_verifies() -> None:
    older = hash_password("admin", PASSWORD, n=2**14, r=8, p=1)  # what passwd wrote before
    stored = Credential.parse(older.line())
    assert (stored.n, stored.r, stored.p) == (2**14, 8, 1)
    assert verify_password(stored, "admin", PASSWORD)
    assert not verify_password(stored, "admin", PASSWORD + "x")


def test_a_new_hash_uses_8_mib_per_check() -> None:
    cred = Credential.parse(hash_password("admin", PASSWORD).line())
    assert (cred.n, cred.r, cred.p) == (SCRYPT_N, SCRYPT_R, SCRYPT_P)
    assert cred.memory == 8 * 1024 * 1024
    assert verify_password(cred, "admin", PASSWORD)


def test_a_password_file_asking_for_too_much_memory_is_refused_with_the_reason() -> None:
    line = hash_password("admin", PASSWORD, n=2**4, r=8, p=1).line().replace(":scrypt:16:8:", ":scrypt:1048576:8:")
    with pytest.raises(ValueError, match=f"1024 MiB per check; at most {MAX_KDF_MEMORY >> 20} MiB"):
        Credential.parse(line)
