#!/usr/bin/env python3
"""No-op apply against no-op plan, at 1,000 and 5,000 generated units.

Generates the same repository as bench/plan_1000.py (manifests and template
units in three layers, chains of dependencies), applies it once, then times
`terrace plan` and `terrace apply` with nothing to do. A no-op apply locks
every unit, plans it again and releases the lock, so it should cost about
what a plan costs, and grow linearly.

Goal (issue "fail closed"): no-op apply of 5,000 units under 5 s, and at
most 6x the 1,000-unit figure. There is no reference tool for this number
(Terragrunt's run-all is not installable here); the plan beside it is the
reference: apply/plan is printed as a ratio.
"""
import os, shutil, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("RUNS", "3"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plan_1000  # noqa: E402  (the generator)


def timed(cmd, cwd, expect):
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ms = (time.perf_counter() - t) * 1000
    if r.returncode != expect:
        sys.exit(f"{' '.join(cmd)}: exit {r.returncode}, expected {expect}\n{r.stderr.decode()[-2000:]}")
    return ms


def measure(terrace, units):
    plan_1000.UNITS = units
    tmp = tempfile.mkdtemp(prefix="terrace-bench-")
    try:
        plan_1000.generate(tmp)
        subprocess.run([terrace, "apply", "-j", "4"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        plan = statistics.median(timed([terrace, "plan"], tmp, 0) for _ in range(RUNS))
        apply = statistics.median(timed([terrace, "apply", "-j", "4"], tmp, 0) for _ in range(RUNS))
        return plan, apply
    finally:
        shutil.rmtree(tmp)


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "terrace"], cwd=ROOT, check=True)
    terrace = os.path.join(ROOT, "target", "release", "terrace")
    results = {}
    for units in (1000, 5000):
        results[units] = measure(terrace, units)
        plan, apply = results[units]
        print(f"{units:5d} units  no-op plan {plan:8.0f} ms   no-op apply {apply:8.0f} ms   apply/plan {apply / plan:5.2f}x")
    growth = results[5000][1] / results[1000][1]
    print(f"no-op apply 5,000 / 1,000 units: {growth:.2f}x (goal <= 6x); 5,000-unit apply "
          f"{results[5000][1] / 1000:.2f} s (goal < 5 s)")


if __name__ == "__main__":
    main()
