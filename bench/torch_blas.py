"""BLAS selection for the PyTorch baselines (bench/torch_llama.py, bench/torch_gemm.py): call
maybe_reexec_with_openblas(sys.argv) before importing torch."""
import glob
import json
import os
import shutil
import subprocess
import sys

# ----------------------------------------------------------------------------------------------------------
# BLAS selection (before torch is imported: the dynamic loader reads LD_LIBRARY_PATH only at process start)
# ----------------------------------------------------------------------------------------------------------
# Debian's python3-torch links libblas.so.3, and apt satisfies that with whatever provides it; on this machine it
# is libblas3, the netlib *reference* BLAS (~3 GFLOP/s here against ~110-150 for OpenBLAS on 2 cores), which no
# PyTorch user would benchmark with. So with --blas auto (default), when the system libblas.so.3 is not
# OpenBLAS, the script re-executes itself with LD_LIBRARY_PATH pointing at an OpenBLAS libblas.so.3, preferring
# the OpenMP build (it shares libgomp's pool with torch, as MKL does in pip wheels; the pthread build's workers
# spin after each GEMM and slow torch's OpenMP elementwise ops down on a 2-core machine). Where it looks, in order:
#   $AJUSTE_TORCH_BLAS_DIR (a directory holding libblas.so.3);
#   /usr/lib/x86_64-linux-gnu/openblas-{openmp,pthread} (installed but not selected by update-alternatives);
#   ~/.cache/ajuste-bench/libopenblas0-{openmp,pthread}/ (unpacked earlier);
#   /var/cache/apt/archives/libopenblas0-{openmp,pthread}_*.deb, unpacked with `dpkg-deb -x` into that cache
#   (no root, nothing installed).
# It never downloads; `torch_llama.py fetch-openblas` runs `apt-get download libopenblas0-openmp` into the
# cache and unpacks it. --blas system keeps whatever the system resolves. The JSON reports the BLAS actually
# mapped ("blas", "blas_kind").

_MULTIARCH = "/usr/lib/x86_64-linux-gnu"
_REEXEC_MARK = "AJUSTE_TORCH_BLAS_REEXEC"
_FLAVOURS = ("openmp", "pthread")


def _cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ajuste-bench")


def _unpacked_dir(flavour):
    return os.path.join(_cache_root(), "libopenblas0-" + flavour, "usr/lib/x86_64-linux-gnu/openblas-" + flavour)


def _system_blas_is_openblas():
    for cand in (os.path.join(_MULTIARCH, "libblas.so.3"), "/lib/x86_64-linux-gnu/libblas.so.3"):
        if os.path.exists(cand):
            return "openblas" in os.path.realpath(cand)
    return False


def _unpack_deb(deb, flavour):
    """Unpacks a libopenblas0-<flavour> .deb into the cache; returns its libblas directory or None."""
    dest = os.path.join(_cache_root(), "libopenblas0-" + flavour)
    tmp = dest + ".tmp%d" % os.getpid()
    try:
        os.makedirs(tmp, exist_ok=True)
        subprocess.run(["dpkg-deb", "-x", deb, tmp], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not os.path.exists(dest):
            os.rename(tmp, dest)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.stderr.write("torch_llama.py: could not unpack %s into %s: %s\n" % (deb, dest, e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    d = _unpacked_dir(flavour)
    return d if os.path.exists(os.path.join(d, "libblas.so.3")) else None


def _find_openblas_dir():
    env_dir = os.environ.get("AJUSTE_TORCH_BLAS_DIR")
    if env_dir:
        if not os.path.exists(os.path.join(env_dir, "libblas.so.3")):
            raise SystemExit("torch_llama.py: AJUSTE_TORCH_BLAS_DIR=%s has no libblas.so.3; point it at a "
                             "directory holding one (e.g. .../openblas-openmp) or unset it" % env_dir)
        return env_dir
    for flavour in _FLAVOURS:
        for d in (os.path.join(_MULTIARCH, "openblas-" + flavour), _unpacked_dir(flavour)):
            if os.path.exists(os.path.join(d, "libblas.so.3")):
                return d
    if shutil.which("dpkg-deb"):
        for flavour in _FLAVOURS:
            debs = sorted(glob.glob("/var/cache/apt/archives/libopenblas0-%s_*_amd64.deb" % flavour))
            if debs:
                d = _unpack_deb(debs[-1], flavour)
                if d:
                    return d
    return None


def _fetch_openblas():
    """Explicit, networked: apt-get download libopenblas0-openmp into the cache and unpack it."""
    os.makedirs(_cache_root(), exist_ok=True)
    r = subprocess.run(["apt-get", "download", "libopenblas0-openmp"], cwd=_cache_root())
    debs = sorted(glob.glob(os.path.join(_cache_root(), "libopenblas0-openmp_*_amd64.deb")))
    if r.returncode != 0 or not debs:
        raise SystemExit("torch_llama.py: `apt-get download libopenblas0-openmp` failed; install "
                         "libopenblas0-openmp with apt or set AJUSTE_TORCH_BLAS_DIR")
    d = _unpack_deb(debs[-1], "openmp")
    print(json.dumps({"mode": "fetch-openblas", "blas_dir": d}))


def _maybe_reexec_with_openblas(argv):
    if "--blas" in argv and argv[argv.index("--blas") + 1:][:1] == ["system"]:
        return
    if os.environ.get(_REEXEC_MARK) or _system_blas_is_openblas():
        return
    d = _find_openblas_dir()
    if d is None:
        return
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = d + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env[_REEXEC_MARK] = d
    if "pthread" in d:
        env.setdefault("OPENBLAS_NUM_THREADS", argv[argv.index("--threads") + 1] if "--threads" in argv else "2")
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable] + argv, env)


def _mapped_blas():
    """The BLAS shared objects mapped into this process, and what kind they are."""
    libs = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and "blas" in os.path.basename(parts[5]):
                    libs.add(parts[5])
    except OSError:
        return "unknown", "unknown"
    if not libs:
        return "none", "unknown"
    if any("openblas" in x for x in libs):
        kind = "openblas"
    elif any("/blas/" in x for x in libs):
        kind = "reference (netlib libblas3)"
    else:
        kind = "other"
    return ",".join(sorted(libs)), kind
