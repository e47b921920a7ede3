"""The Dockerfiles against the setup script and the binary: the build stages install every package
of scripts/packages.txt (plus Open MPI, which the image always carries), and the runtime stage
provides every shared library `ldd build/tessera` resolves (or the slim base image has it)."""
import os
import re
import subprocess

from deploy_util import DEPLOY, SOURCE, check, fail, tessera

MPI = {"openmpi-bin", "libopenmpi-dev"}
CUDA_BUILD = {"nvidia-cuda-toolkit"}
# Packages every debian:bookworm-slim image has (Essential / Priority: required).
SLIM_BASE = {"libc6", "libgcc-s1", "zlib1g", "libstdc++6", "libc-bin"}


def packages_txt():
    lines = open(os.path.join(SOURCE, "scripts", "packages.txt")).read().splitlines()
    return {l.strip() for l in lines if l.strip() and not l.strip().startswith("#")}


def stages(dockerfile):
    """{stage name: [packages of its apt-get install lines]}"""
    text = open(dockerfile).read().replace("\\\n", " ")
    result, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*FROM\s+\S+\s+AS\s+(\S+)", line, re.I)
        if m:
            current = m.group(1)
            result[current] = []
            continue
        m = re.search(r"apt-get install ([^&]*)", line)
        if m and current:
            result[current] += [w for w in m.group(1).split() if not w.startswith("-")]
    return result


def with_dependencies(packages):
    """The packages and everything they depend on (Depends, Pre-Depends), as apt would install
    them, read from this machine's package database (packages not installed here end a branch)."""
    seen, todo = set(), list(packages)
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        seen.add(pkg)
        r = subprocess.run(["dpkg-query", "-W", "-f=${Depends}, ${Pre-Depends}", pkg],
                           capture_output=True, text=True)
        if r.returncode != 0:
            continue
        for alternative in r.stdout.split(","):
            name = alternative.split("|")[0].strip().split(" ")[0].split(":")[0]
            if name:
                todo.append(name)
    return seen


def owning_package(path):
    real = os.path.realpath(path)
    for candidate in (real, real.replace("/usr/lib/", "/lib/", 1), path):
        r = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if r.returncode == 0:
            return r.stdout.split(":")[0].strip()
    return None


def main():
    wanted = packages_txt()
    for name, extra in (("Dockerfile", set()), ("Dockerfile.cuda", CUDA_BUILD)):
        path = os.path.join(DEPLOY, "docker", name)
        s = stages(path)
        check(set(s) == {"build", "runtime"}, f"{name}: stages {sorted(s)}, want build and runtime")
        build = set(s["build"])
        check(len(build) == len(s["build"]), f"{name}: a package is listed twice")
        missing = wanted - build
        check(not missing, f"{name}: the build stage lacks {sorted(missing)} of packages.txt")
        unknown = build - wanted - MPI - extra
        check(not unknown, f"{name}: the build stage installs {sorted(unknown)}, which "
              "scripts/packages.txt does not list")
        check(MPI <= build, f"{name}: the build stage must install {sorted(MPI)}")
        runtime = set(s["runtime"])
        check({"libopenmpi3", "openmpi-bin"} <= runtime, f"{name}: runtime lacks Open MPI")
        check(not any(p.endswith("-dev") for p in runtime), f"{name}: -dev package at runtime")
        text = open(path).read()
        check(re.search(r'^ENTRYPOINT \["tessera", "serve"\]$', text, re.M),
              f"{name}: ENTRYPOINT must be [\"tessera\", \"serve\"]")
        users = re.findall(r"^USER (\S+)$", text, re.M)
        check(users and users[-1] not in ("root", "0"), f"{name}: the image must not run as root")
        # Everything COPY'd into the build must exist.
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
            for p in src.split():
                check(os.path.exists(os.path.join(SOURCE, p)), f"{name}: COPY {p}: no such path")

    # The CPU runtime stage against what the binary links.
    runtime = with_dependencies(stages(os.path.join(DEPLOY, "docker", "Dockerfile"))["runtime"])
    out = subprocess.run(["ldd", tessera()], capture_output=True, text=True, check=True).stdout
    libs = re.findall(r"=> (/\S+)", out)
    check(libs, "ldd printed no libraries")
    for lib in libs:
        if re.match(r"/usr/local/cuda", lib):
            # A build that found NVIDIA's toolkit links its cuBLASLt; the CPU image builds without
            # nvcc, and the CUDA image installs Debian's cuBLAS (libcublaslt11) in its runtime.
            print(f"skip: {os.path.basename(lib)} (the CUDA toolkit's, not a Debian package)")
            continue
        pkg = owning_package(lib)
        if pkg is None:
            fail(f"{lib}: no Debian package owns it")
        pkg = pkg.split(",")[0]
        arch_free = pkg.split(":")[0]
        check(arch_free in runtime or arch_free in SLIM_BASE,
              f"{lib} comes from {arch_free}, which the runtime stage does not install "
              "(directly or as a dependency)")
        print(f"ok: {os.path.basename(lib)} from {arch_free}")
    print(f"ok: Dockerfiles agree with scripts/packages.txt ({len(wanted)} packages)")


main()
