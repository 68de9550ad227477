# syntax=docker/dockerfile:1
# pullthrough as a drop-in for registry:2: the same config path, volume and port.
#   docker build -t pullthrough .
#   docker run -d -p 5000:5000 -v ./config.yml:/etc/docker/registry/config.yml \
#     -v cache:/var/lib/registry pullthrough
# buildah/podman: add --format docker, or the HEALTHCHECK is dropped (OCI has none).
# BASE is any glibc image with python3 (>= 3.11); rebuild on your own with
# --build-arg BASE=... The build stage runs on BUILD_BASE (BASE unless given): the same
# python3 at the same path, with its venv module and binutils' strip (installed with
# apt-get if missing). The image itself is not BASE with a venv on top but only what the
# server runs, taken from BASE (deploy/image/runtime_root.py): its python, the standard
# library, the shared libraries they load, CA certificates, time zones; no shell, no
# package manager, as distroless images are.
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
#   pullthrough shows; the image's last step (deploy/image/check.py) draws them without.
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
# v1-style __get_validators__, and pullthrough has none). The image sets
# PYTHONDONTWRITEBYTECODE, so nothing is compiled again at run time.
RUN site="$(/opt/pullthrough/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && rm -rf "$site"/pycparser "$site"/pycparser-*.dist-info "$site"/pydantic/v1 \
 && find "$site" -type f \( -name '*.pyi' -o -name '*.c' -o -name '*.h' -o -name '*.pyx' \
      -o -name '*.pxd' -o -name '*.cpp' \) -delete \
 && /opt/pullthrough/bin/python -m compileall -q -b -f -j 0 "$site" \
 && find "$site" -type f -name '*.py' -exec sh -c \
      'for f in "$@"; do if [ -f "${f}c" ]; then rm "$f"; fi; done' sh {} + \
 && find "$site" -type d -name __pycache__ -prune -exec rm -rf {} + \
 && /opt/pullthrough/bin/python -m pullthrough --version \
 && test -z "$(find /opt/pullthrough/lib -name '*.py' -o -name __pycache__)"

# The image's root filesystem, from BASE: what the venv's python needs to run the server.
FROM ${BASE} AS root
ARG UID=10001
COPY --from=build /opt/pullthrough /opt/pullthrough
COPY deploy/image/runtime_root.py /src/
RUN /opt/pullthrough/bin/python -I /src/runtime_root.py \
      --venv /opt/pullthrough --uid ${UID} /runtime \
 && mkdir /empty

FROM scratch AS image
# A fixed UID, so a volume's ownership means the same in every container and on the host.
ARG UID=10001
# The base's part; the volume's mount point, made here by --chown so that it is the server's
# user's (an empty directory's contents copied); then the venv.
COPY --from=root /runtime /
COPY --from=root --chown=${UID}:${UID} /empty /var/lib/registry
COPY --from=build /opt/pullthrough /opt/pullthrough
COPY deploy/image/config.yml /etc/docker/registry/config.yml
ENV PATH=/opt/pullthrough/bin \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# What the server needs, asked of a copy of the image as the server's user, so the check's
# file stays out of the image: a file runtime_root.py left out (or one the user cannot
# read) fails the build here, not a request.
FROM image AS checked
ARG UID=10001
COPY deploy/image/check.py /check/
USER ${UID}:${UID}
RUN ["/opt/pullthrough/bin/python", "-B", "/check/check.py"]

FROM image
ARG UID=10001
# The same bytes as the image's own: taken from the checked copy so that the check runs
# before the image is made (BuildKit builds only the stages the last one uses).
COPY --from=checked /opt/pullthrough/pyvenv.cfg /opt/pullthrough/pyvenv.cfg
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
