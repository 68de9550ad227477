# syntax=docker/dockerfile:1
# pullthrough as a drop-in for registry:2: the same config path, volume and port.
#   docker build -t pullthrough .
#   docker run -d -p 5000:5000 -v ./config.yml:/etc/docker/registry/config.yml \
#     -v cache:/var/lib/registry pullthrough
# buildah/podman: add --format docker, or the HEALTHCHECK is dropped (OCI has none).
# BASE is any image with python3 (>= 3.11) at the same path in both stages; rebuild on your
# own with --build-arg BASE=... The build stage runs on BUILD_BASE (BASE unless given): the
# same python3 with its venv module, and binutils' strip (installed with apt-get if missing).
ARG BASE=python:3.11-slim
ARG BUILD_BASE=${BASE}

FROM ${BUILD_BASE} AS build
# Wheels of exactly the pinned set (requirements.lock) and of this project, then a venv made
# of only those wheels; the final stage copies the venv, not pip's cache or a compiler.
WORKDIR /src
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src
RUN python3 -m venv /opt/build \
 && /opt/build/bin/pip install -q --no-cache-dir --disable-pip-version-check \
      -c requirements.lock pip \
 && /opt/build/bin/pip wheel -q --no-cache-dir --disable-pip-version-check \
      -c requirements.lock --wheel-dir /wheels . \
 && python3 -m venv /opt/pullthrough \
 && /opt/pullthrough/bin/pip install -q --no-cache-dir --disable-pip-version-check \
      --no-index --find-links /wheels pullthrough \
 && /opt/pullthrough/bin/pullthrough --version
# What the venv carries that the server never runs, measured on Debian's python3:
# - debug symbols in the wheels' extensions: 46 MB of .so, 21 MB stripped (uvloop alone
#   13.6 MB to 1.6 MB); Python tracebacks are unchanged.
# - Pygments and markdown-it-py (10.7 MB with mdurl): rich needs them for syntax
#   highlighting, Markdown and its tracebacks, never for the progress bars that are all
#   pullthrough shows; the check below draws those bars without them.
# - pip, setuptools and the activate scripts.
RUN /opt/pullthrough/bin/pip uninstall -q -y pygments markdown-it-py mdurl setuptools pip \
 && rm -f /opt/pullthrough/bin/activate* /opt/pullthrough/bin/Activate.ps1 \
 && { command -v strip >/dev/null \
      || { apt-get update -q && apt-get install -q -y --no-install-recommends binutils; }; } \
 && find /opt/pullthrough -name '*.so' -exec strip --strip-unneeded {} +
# Bytecode only (66 MB of venv become 51 MB): every module compiled next to its source
# (compileall -b writes foo.pyc beside foo.py, which Python imports without the source), then
# the sources and pip's __pycache__ removed; the status page's templates and static files
# stay. Tracebacks keep file names and line numbers but lose the source lines. Gone too,
# as never run: type stubs and the C/Cython sources and headers wheels ship; pycparser
# (cffi parses C declarations with it only when a binding is built, and cryptography's and
# bcrypt's are built already); pydantic.v1 (pydantic 2 imports it only for a type with a
# v1-style __get_validators__, and pullthrough has none). The run stage sets
# PYTHONDONTWRITEBYTECODE, so nothing is compiled again at run time.
# Then what the server needs is checked against the venv as shipped, so a file missing here
# fails the build rather than a request: every module of pullthrough imported (but __main__,
# which runs the CLI), the status page's templates and static files loaded, the extensions
# loaded and used, rich's progress bars drawn without Pygments.
RUN site="$(/opt/pullthrough/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && rm -rf "$site"/pycparser "$site"/pycparser-*.dist-info "$site"/pydantic/v1 \
 && find "$site" -type f \( -name '*.pyi' -o -name '*.c' -o -name '*.h' -o -name '*.pyx' \
      -o -name '*.pxd' -o -name '*.cpp' \) -delete \
 && /opt/pullthrough/bin/python -m compileall -q -b -f -j 0 "$site" \
 && find "$site" -type f -name '*.py' -exec sh -c \
      'for f in "$@"; do if [ -f "${f}c" ]; then rm "$f"; fi; done' sh {} + \
 && find "$site" -type d -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/pullthrough/bin/python -c 'import importlib, io, pkgutil; \
      import pullthrough, uvloop, pydantic_core, yaml, bcrypt, multidict, yarl, frozenlist, \
      propcache, obstore; \
      [importlib.import_module(m.name) for m in pkgutil.walk_packages(pullthrough.__path__, \
       "pullthrough.") if m.name != "pullthrough.__main__"]; \
      from pullthrough.server.status.page import add_page_routes; \
      from aiohttp import web; add_page_routes(web.Application()); \
      assert bcrypt.checkpw(b"pw", bcrypt.hashpw(b"pw", bcrypt.gensalt(4))); \
      from cryptography.hazmat.primitives import hashes; \
      from cryptography.hazmat.primitives.asymmetric import ec; \
      key = ec.generate_private_key(ec.SECP256R1()); sig = ec.ECDSA(hashes.SHA256()); \
      key.public_key().verify(key.sign(b"m", sig), b"m", sig); \
      from pullthrough.progress import Reporter; \
      r = Reporter(tty=True, out=io.StringIO()); r.__enter__(); \
      r.advance(r.add("check", 2), 1); r.line("ok"); r.__exit__(None, None, None)' \
 && /opt/pullthrough/bin/python -m pullthrough --version \
 && test -z "$(find /opt/pullthrough/lib -name '*.py' -o -name __pycache__)"

FROM ${BASE}
# A fixed UID, so a volume's ownership means the same in every container and on the host.
ARG UID=10001
RUN groupadd --system --gid ${UID} pullthrough \
 && useradd --system --uid ${UID} --gid ${UID} --home-dir /var/lib/registry \
      --no-create-home --shell /usr/sbin/nologin pullthrough \
 && mkdir -p /var/lib/registry /etc/docker/registry \
 && chown ${UID}:${UID} /var/lib/registry
COPY --from=build /opt/pullthrough /opt/pullthrough
COPY deploy/image/config.yml /etc/docker/registry/config.yml
ENV PATH=/opt/pullthrough/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER ${UID}:${UID}
WORKDIR /var/lib/registry
VOLUME /var/lib/registry
EXPOSE 5000
# PID 1 is pullthrough itself: SIGTERM drains transfers for http.draintimeout (8 s unless
# set), SIGHUP reloads the TLS certificate.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=6s --start-period=10s --retries=3 \
  CMD ["pullthrough", "health", "/etc/docker/registry/config.yml"]
ENTRYPOINT ["pullthrough"]
CMD ["serve", "/etc/docker/registry/config.yml"]
