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
 && find /opt/pullthrough -name '*.so' -exec strip --strip-unneeded {} + \
 && /opt/pullthrough/bin/python -c 'import io, uvloop, cryptography.hazmat.bindings._rust, \
      pydantic_core, aiohttp, yaml, bcrypt, multidict, yarl, frozenlist, propcache, obstore; \
      from pullthrough.progress import Reporter; \
      r = Reporter(tty=True, out=io.StringIO()); r.__enter__(); \
      r.advance(r.add("check", 2), 1); r.line("ok"); r.__exit__(None, None, None)'

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
