"""Make the image's root filesystem: what the server runs on, taken from the base, and no more.

Run by the Dockerfile's ``root`` stage, on the base, with the venv the build stage made (its
python is the base's interpreter)::

    /opt/pullthrough/bin/python -I runtime_root.py --venv /opt/pullthrough --uid 10001 /runtime

Into ``/runtime`` it copies, from the base, keeping every symlink on the way (merged /usr,
library versions, the loader's /lib64 link):

- the interpreter the venv runs, and its standard library as bytecode only (compiled beside
  each source, the sources dropped, as the venv is), without what a server never runs:
  tests, IDLE, tkinter, turtle demos, ensurepip's bundled wheels, lib2to3, pydoc's topics,
  the extensions for tests, terminals (curses, readline), NIS and dbm files, the base's
  site-packages (pip, setuptools) and its static library;
- every shared library the interpreter and any extension module (the standard library's and
  the venv's) loads, as the base's dynamic loader resolves them (traced as ``ldd``, a bash
  script not every base has, does), glibc's name-service modules where they are apart from
  libc, and an ld.so cache of them (a CPython in /usr/local finds its libpython through it);
- CA certificates (where this Python's OpenSSL looks, and /etc/ssl), OpenSSL's config, time
  zones, the name-service and network files, os-release;
- dpkg's status entries of the Debian packages those files (but config files) come from,
  so image scanners (trivy, grype) still see which packages' files the image carries;

and writes /etc/passwd and /etc/group (root and the server's user) and an empty /tmp (1777);
the Dockerfile adds /var/lib/registry, owned by the server's user. No shell, no package
manager: nothing in the image runs one. A file the server needs and this leaves out fails
the Dockerfile's final check, which imports and exercises every module in the finished
image as the server's user.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import ssl
import struct
import subprocess
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

# Parts of the standard library a server never imports (the official Python images drop
# the tests too).
STDLIB_DROPPED = {
    "site-packages", "dist-packages", "test", "tests", "idle_test", "idlelib", "tkinter",
    "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "__pycache__",
}  # fmt: skip
# In lib-dynload: CPython's own test extensions, and what only a terminal session or a
# desktop uses (tkinter, curses, readline), an old directory service (NIS: with it come
# Kerberos and libtirpc) or dbm files (Berkeley DB, 1.8 MB; dbm.dumb stays).
DYNLOAD_DROPPED = re.compile(
    r"^(_test\w*|_?xx\w*|_ctypes_test|_tkinter|_curses\w*|readline|nis|_dbm|_gdbm)\."
)
# Small system files Python and glibc read when present: name service, services and
# protocols, the loader's config, TLS, time zones and which distribution this is.
SYSTEM_FILES = (
    "/etc/nsswitch.conf", "/etc/host.conf", "/etc/gai.conf", "/etc/services",
    "/etc/protocols", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/os-release",
    "/etc/ssl", "/usr/share/ca-certificates", "/etc/localtime", "/etc/timezone",
    "/usr/share/zoneinfo",
)  # fmt: skip
# tzdata's leap-second copy of every zone: glibc and Python read the plain ones.
SYSTEM_DROPPED = {"right"}
SHARED_OBJECT = re.compile(r"\.so(\.[0-9.]+)?$")
LDD_PATH = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)")


class Root:
    """A root filesystem under construction: paths copied from / into ``self.dir``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.copied: set[str] = set()  # real files copied, as paths on the base

    def inside(self, path: str) -> Path:
        return self.dir / path.lstrip("/")

    def copy(self, path: str) -> None:
        """``path`` as it is on the base: each symlink along it made again and followed, the
        file (or directory, empty) at its end copied."""
        current = Path("/")
        parts = Path(path).parts[1:]
        for index, part in enumerate(parts):
            current = current / part
            if not os.path.lexists(current):  # a link to nothing: nothing to copy
                return
            target = self.inside(str(current))
            if current.is_symlink():
                link = os.readlink(current)
                if not target.is_symlink():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(link, target)
                # The rest of the path, under where the link points (a sibling's target is
                # resolved from this link's real parent).
                rest = os.path.join(os.path.dirname(current), link, *parts[index + 1 :])
                self.copy(os.path.normpath(rest))
                return
            if index < len(parts) - 1 or current.is_dir():
                if not target.exists():
                    target.mkdir(parents=True)
                    shutil.copystat(current, target)
            elif current.exists() and str(current) not in self.copied:
                shutil.copy2(current, target)
                self.copied.add(str(current))

    def copy_tree(self, top: str, dropped: Collection[str] = (), dereference: bool = False) -> None:
        """Every file under ``top`` (symlinks made again and followed, or with
        ``dereference`` the files they point at copied in their place), but directories named
        in ``dropped``."""
        self.copy(top)
        real = os.path.realpath(top)
        if not os.path.isdir(real):
            return
        for directory, dirs, files in os.walk(real):
            dirs[:] = [d for d in dirs if d not in dropped]
            for name in files:
                path = os.path.join(directory, name)
                if dereference and os.path.islink(path) and os.path.isfile(path):
                    self.copy(directory)
                    shutil.copy2(path, self.inside(path))
                else:
                    self.copy(path)
            for name in dirs:
                if os.path.islink(os.path.join(directory, name)):
                    self.copy(os.path.join(directory, name))


def elf_interpreter(executable: str) -> str:
    """The dynamic loader an ELF executable names (its PT_INTERP), which says what a file
    loads (``shared_libraries``)."""
    with open(executable, "rb") as file:
        elf = file.read()
    if elf[:4] != b"\x7fELF":
        sys.exit(f"runtime_root: {executable} is not an ELF executable (a wrapper script?)")
    order = "<" if elf[5] == 1 else ">"
    # Where ELF64 or ELF32 keep e_phoff, e_phentsize and e_phnum, then a program header's
    # p_offset and p_filesz, and the size of an address.
    phoff_at, phent_at, offset_at, size_at, word = (
        (0x20, 0x36, 8, 32, "Q") if elf[4] == 2 else (0x1C, 0x2A, 4, 16, "I")
    )
    (phoff,) = struct.unpack_from(order + word, elf, phoff_at)
    phentsize, phnum = struct.unpack_from(order + "HH", elf, phent_at)
    for index in range(phnum):
        entry = phoff + index * phentsize
        if struct.unpack_from(order + "I", elf, entry)[0] == 3:  # PT_INTERP
            (offset,) = struct.unpack_from(order + word, elf, entry + offset_at)
            (size,) = struct.unpack_from(order + word, elf, entry + size_at)
            return elf[offset : offset + size].rstrip(b"\0").decode()
    sys.exit(f"runtime_root: {executable} names no dynamic loader (a static python?)")


def shared_libraries(loader: str, path: str) -> list[str] | None:
    """What the loader says ``path`` loads (itself included): [] when it is not a dynamic
    ELF file, None when the base lacks one of them. Traced as ``ldd`` traces: with
    ``--list`` instead, a missing library is an error like any other."""
    proc = subprocess.run(
        [loader, path],
        env={**os.environ, "LD_TRACE_LOADED_OBJECTS": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:  # not dynamic (a static binary, a script)
        return []
    if "not found" in proc.stdout:
        return None
    return [m.group(1) for m in map(LDD_PATH.search, proc.stdout.splitlines()) if m]


def extension_modules(top: str) -> Iterator[str]:
    """Shared objects under ``top``: extension modules and the libraries wheels bundle."""
    for directory, _, files in os.walk(top):
        yield from (os.path.join(directory, f) for f in files if SHARED_OBJECT.search(f))


def copy_python(root: Root, venv: Path) -> tuple[str, set[str]]:
    """The interpreter the venv's ``python`` links to, and its standard library (pruned);
    returns the dynamic loader and the shared libraries what was copied loads."""
    python = str(venv / "bin" / "python")
    while os.path.islink(python) and python.startswith(f"{venv}/"):  # the venv's own links
        python = os.path.normpath(os.path.join(os.path.dirname(python), os.readlink(python)))
    root.copy(python)
    loader = elf_interpreter(os.path.realpath(python))
    libraries = set(shared_libraries(loader, os.path.realpath(python)) or ())
    # Where this interpreter finds them, not where it was built to (sysconfig's DESTSHARED
    # is the build's path, wrong for a relocated CPython).
    stdlib = os.path.dirname(os.__file__)
    dynload = next(p for p in sys.path if os.path.basename(p) == "lib-dynload")
    static = {n for n in os.listdir(stdlib) if n.startswith("config-")}  # libpython.a
    # Dereferenced: Debian links sitecustomize.py to /etc, and the link is compiled away.
    dropped = STDLIB_DROPPED | static | {os.path.basename(dynload)}
    root.copy_tree(stdlib, dropped, dereference=True)
    for path in sorted(extension_modules(dynload)):
        if DYNLOAD_DROPPED.match(os.path.basename(path)):
            continue
        needed = shared_libraries(loader, path)
        if needed is None:  # cannot load on the base either
            print(f"runtime_root: left out {path}: the base lacks a library it needs")
            continue
        root.copy(path)
        libraries.update(needed)
    return loader, libraries


def compile_stdlib(root: Root) -> None:
    """Bytecode beside each module (``compileall -b``: imported without the source), with
    the base's paths in it for tracebacks; then the sources go."""
    stdlib = root.inside(os.path.dirname(os.__file__))
    compileall = [sys.executable, "-m", "compileall", "-q", "-b", "-f", "-j", "0"]
    base_paths = ["-s", str(root.dir), "-p", "/"]
    subprocess.run([*compileall, *base_paths, str(stdlib)], check=True)
    for directory, _, files in os.walk(stdlib):
        for name in files:
            path = os.path.join(directory, name)
            if name.endswith(".py") and os.path.exists(path + "c"):
                os.remove(path)


def copy_certificates(root: Root) -> None:
    """Where this Python's OpenSSL looks for CAs and its config (/usr/lib/ssl on Debian,
    links into /etc/ssl), and /etc/ssl itself."""
    paths = ssl.get_default_verify_paths()
    for path in (paths.openssl_cafile, paths.openssl_capath):
        if path and os.path.lexists(path):
            root.copy_tree(path)
    if paths.openssl_cafile:
        config = os.path.join(os.path.dirname(paths.openssl_cafile), "openssl.cnf")
        if os.path.lexists(config):
            root.copy(config)


def copy_name_service(root: Root, libraries: Collection[str]) -> None:
    """glibc before 2.34 (Debian before bookworm) looks hosts and users up through modules
    it opens when asked, which no loader listing shows; from 2.34 they are in libc."""
    for libc in (lib for lib in libraries if os.path.basename(lib).startswith("libc.so.")):
        for name in ("libnss_files.so.2", "libnss_dns.so.2", "libresolv.so.2"):
            module = os.path.join(os.path.dirname(libc), name)
            if os.path.exists(module):
                root.copy(module)


def write_accounts(root: Root, uid: int) -> None:
    etc = root.inside("/etc")
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        f"pullthrough:x:{uid}:{uid}:pullthrough:/var/lib/registry:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(f"root:x:0:\nnogroup:x:65534:\npullthrough:x:{uid}:\n")
    tmp = root.inside("/tmp")
    tmp.mkdir(exist_ok=True)
    tmp.chmod(0o1777)


def package_owners(dpkg_info: Path) -> dict[str, str]:
    """Every file dpkg installed, by its real path on the base, with its package."""
    owners: dict[str, str] = {}
    for listing in dpkg_info.glob("*.list"):
        package = listing.name[: -len(".list")]
        for line in listing.read_text(errors="replace").splitlines():
            if line and os.path.isfile(line) and not os.path.islink(line):
                owners.setdefault(os.path.realpath(line), package)
    return owners


def write_dpkg_status(root: Root, dpkg: Path = Path("/var/lib/dpkg")) -> list[str]:
    """dpkg's status entries of the packages whose files were copied; returns their names."""
    if not (dpkg / "status").is_file():
        return []  # not a Debian base
    owners = package_owners(dpkg / "info")
    # By what they carry but config (a package of which only /etc files came along, such
    # as libc-bin for ld.so.conf, is not in the image for a scanner to judge).
    carried = (os.path.realpath(p) for p in root.copied)
    packages = {owners[p] for p in carried if p in owners and not p.startswith("/etc/")}
    names = {p.partition(":")[0] for p in packages}
    entries = []
    for entry in (dpkg / "status").read_text().split("\n\n"):
        found = re.search(r"^Package: (\S+)$", entry, re.MULTILINE)
        if found and found.group(1) in names:
            entries.append(entry.strip() + "\n")
    target = root.inside(str(dpkg))
    target.mkdir(parents=True, exist_ok=True)
    (target / "status").write_text("\n".join(entries))
    return sorted(names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    root = Root(args.root.resolve())
    root.dir.mkdir(parents=True, exist_ok=True)
    loader, libraries = copy_python(root, args.venv)
    compile_stdlib(root)
    copy_certificates(root)
    for path in SYSTEM_FILES:
        if os.path.lexists(path):
            root.copy_tree(path, SYSTEM_DROPPED)
    for path in extension_modules(str(args.venv)):
        needed = shared_libraries(loader, path)
        if needed is None:
            # As on the base: the package falls back to pure Python, or the final check
            # fails on the import.
            print(f"runtime_root: {path} cannot load: the base lacks a library it needs")
            continue
        libraries.update(needed)
    # Libraries wheels bundle (``*.libs``) come with the venv, which the image copies itself.
    libraries = {lib for lib in libraries if not lib.startswith(f"{args.venv}/")}
    for library in sorted(libraries):
        root.copy(library)
    copy_name_service(root, libraries)
    write_accounts(root, args.uid)
    # The loader's cache, for libraries outside its default directories (/usr/local/lib);
    # -X: the links between library versions stay as the base has them.
    subprocess.run(["ldconfig", "-X", "-r", str(root.dir)], check=True)
    packages = write_dpkg_status(root)
    print(
        f"runtime_root: {len(root.copied)} files, {len(libraries)} shared libraries, "
        f"{len(packages)} Debian packages: {' '.join(packages)}"
    )


if __name__ == "__main__":
    main()
