"""What a machine's platform is, as the bootstrap probe finds it there (this file's source is sent
ahead of ``probe.py``'s) and as the client finds its own: what :class:`rh_core.bootstrap.wheels.Platform`
needs. Standard library only: it runs where rh_core is not installed yet."""


def rh_platform():
    import glob, os, platform, re, subprocess, sys
    libc, version = "", ""
    try:
        found = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):
        found = ""
    if found.startswith("glibc "):
        libc, version = "glibc", found.split()[1]
    else:
        for loader in glob.glob("/lib/ld-musl-*.so.1"):
            said = subprocess.run([loader], capture_output=True, text=True).stderr
            match = re.search(r"Version (\d+)\.(\d+)", said)
            if match:
                libc, version = "musl", "%s.%s" % match.groups()
                break
    return {"system": platform.system(), "machine": platform.machine(), "libc": libc, "libc_version": version,
            "python": "%d.%d" % sys.version_info[:2],
            "implementation": "pp" if sys.implementation.name == "pypy" else "cp"}
