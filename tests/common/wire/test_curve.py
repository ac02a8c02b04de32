"""CURVE key files: the secret one readable by its owner only."""

import stat

from common.wire.curve import create_keys, load_client_keys


def test_the_secret_key_file_is_private_and_the_pair_loads(tmp_path):
    public, secret = create_keys(tmp_path, "trainer")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) & 0o044  # the public one may be shared
    keys = load_client_keys(secret, public)
    assert keys.public and keys.secret and keys.server_public == keys.public
