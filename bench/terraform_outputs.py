#!/usr/bin/env python3
"""Cross-unit outputs of Terraform units: terrace against what Terragrunt does.

Builds a chain of 100 terraform units (each takes the previous one's output
as a variable; only the built-in terraform_data resource, so it runs
offline), applies it once, then times, in one run:

- terrace: resolving every unit's outputs the way dependents get them
  (`terrace output --output json`: one process, each unit's outputs read
  straight from its state file);
- the reference: `terraform output -json` once per dependency, in the
  unit's directory with its data directory (what Terragrunt runs for each
  `dependency` block);

and prints them side by side as a ratio (goal: at least 50x). Then it times
`terrace plan` of the whole chain with nothing to do (end to end: init
cached, one `terraform plan` per unit).
"""
import os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = int(os.environ.get("UNITS", "100"))
RUNS = int(os.environ.get("RUNS", "5"))

MODULE = """variable "prev" {
  type = string
}
resource "terraform_data" "this" {
  input = "${var.prev}/%d"
}
output "id" {
  value = terraform_data.this.id
}
output "path" {
  value = terraform_data.this.input
}
"""


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "terrace"], cwd=ROOT, check=True)
    terrace = os.path.join(ROOT, "target", "release", "terrace")
    work = tempfile.mkdtemp(prefix="terrace-bench-tf-")
    env = dict(os.environ, CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_CLI_CONFIG_FILE="")
    with open(os.path.join(work, "terrace.yaml"), "w") as f:
        f.write("name: chain\nlayers: [infra]\n")
    for i in range(UNITS):
        d = os.path.join(work, "infra", f"u{i:03d}")
        os.makedirs(d)
        prev = "root" if i == 0 else f"${{unit.u{i - 1:03d}.outputs.path}}"
        with open(os.path.join(d, "unit.yaml"), "w") as f:
            f.write(f"layer: infra\nkind: terraform\ninputs:\n  prev: \"{prev}\"\n")
        with open(os.path.join(d, "main.tf"), "w") as f:
            f.write(MODULE % i)
    t = time.perf_counter()
    subprocess.run([terrace, "-C", work, "apply", "-j", "2"], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    apply_s = time.perf_counter() - t

    ours = []
    for _ in range(RUNS):
        t = time.perf_counter()
        out = subprocess.run([terrace, "-C", work, "--output", "json", "output"], check=True, env=env,
                             capture_output=True, text=True).stdout
        ours.append(time.perf_counter() - t)
    assert out.count('"path"') == UNITS, "terrace did not resolve every unit's outputs"

    t = time.perf_counter()
    for i in range(UNITS):
        d = os.path.join(work, "infra", f"u{i:03d}")
        data = os.path.join(work, ".terrace", "terraform", "default", f"u{i:03d}", "data")
        subprocess.run(["terraform", "output", "-json"], cwd=d, check=True, env=dict(env, TF_DATA_DIR=data),
                       stdout=subprocess.DEVNULL)
    theirs = time.perf_counter() - t

    plans = []
    for _ in range(2):
        t = time.perf_counter()
        r = subprocess.run([terrace, "-C", work, "plan"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        plans.append(time.perf_counter() - t)
        assert r.returncode == 0, "the chain should have nothing to do"

    ours_s = statistics.median(ours)
    print()
    print(f"{'workload':<52} {'terrace':>10} {'reference':>10} {'ratio':>8}  goal")
    print(f"{f'outputs of {UNITS} applied units':<52} {ours_s:>9.3f}s {theirs:>9.3f}s {theirs / ours_s:>7.1f}x  >= 50x")
    print(f"\nreference: one `terraform output -json` per unit (what Terragrunt runs per dependency).")
    print(f"plan of the {UNITS}-unit chain with nothing to do: {statistics.median(plans):.2f}s "
          f"(one `terraform plan` per unit, init cached); first apply: {apply_s:.1f}s")
    subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
