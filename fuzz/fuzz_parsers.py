"""Coverage-guided fuzzing (atheris) of the parsers that read what strangers send:
manifests and Accept lines from upstreams and clients, WWW-Authenticate challenges and
token responses from upstreams, htpasswd lines, Range headers, names and digests.

Run bounded: ``python fuzz/fuzz_parsers.py -max_total_time=60``. Any exception other
than the documented refusals is a crash, and atheris stops with the input that caused it.
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports():
    from pullthrough.clientauth.htpasswd import HtpasswdError, basic_credentials, parse_htpasswd
    from pullthrough.errors import RegistryError
    from pullthrough.manifest import NotAManifest, check_manifest, children, parse_accept
    from pullthrough.reference import parse_digest, validate_name, validate_tag
    from pullthrough.server.ranges import parse_range
    from pullthrough.upstream.auth import parse_challenge, same_registrable_domain
    from pullthrough.upstream.ratelimit import parse_retry_after


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    which = fdp.ConsumeIntInRange(0, 7)
    text = fdp.ConsumeUnicodeNoSurrogates(4096)
    if which == 0:
        body = text.encode("utf-8", "surrogatepass")
        kids = children(body)
        assert all(isinstance(d, str) for d in (*kids.blobs, *kids.manifests))
        with contextlib.suppress(NotAManifest):
            check_manifest(body, fdp.ConsumeUnicodeNoSurrogates(64) or None)
    elif which == 1:
        challenge = parse_challenge(text)
        if challenge is not None:
            assert challenge.scheme == challenge.scheme.lower()
            same_registrable_domain(challenge.params.get("realm", ""), "https://example.com")
    elif which == 2:
        parse_accept(text.split("\n"))
    elif which == 3:
        with contextlib.suppress(HtpasswdError):
            parse_htpasswd(text, "fuzz")
        basic_credentials(text)
    elif which == 4:
        size = fdp.ConsumeIntInRange(0, 2**40)
        try:
            got = parse_range(text, size)
        except RegistryError:
            return
        assert got is None or 0 <= got.start < got.stop <= size
    elif which == 5:
        for check in (parse_digest, validate_name, validate_tag):
            with contextlib.suppress(RegistryError):
                check(text)
    elif which == 6:
        wait = parse_retry_after(text)
        assert wait is None or wait >= 0
    else:
        try:
            digest = parse_digest(text)
        except RegistryError:
            return
        assert "/" not in str(digest) and ".." not in str(digest)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
